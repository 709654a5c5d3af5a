"""config.toml -> the frozen objects of model.py, every value checked (reader.py, values.py)
and each destination's own keys read through its type's class (registry.py, settings.py)."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from syncd.config.dburl import parse_db_url, sqlite_file
from syncd.config.model import (
    ALERT_FORMATS,
    DEFAULT_RETENTION,
    DEFAULT_STATE_URL,
    AlertsConfig,
    AudienceConfig,
    Config,
    DestinationConfig,
    GuardConfig,
    MetricsConfig,
    ScheduleConfig,
    SourceConfig,
)
from syncd.config.reader import Reader
from syncd.config.registry import TypeNotFound, destination_type, reserved_fields
from syncd.config.secrets import Secret
from syncd.config.settings import Address
from syncd.config.values import host_port, kind_of
from syncd.errors import ConfigError
from syncd.keys import audience_key

# Bounds of the numbers in the file (README, Configuration). A value outside them is a config
# error at start, never a scheduler thread that dies inside a live daemon (datetime overflow)
# or a pacer that waits for ever. A destination type's own numbers carry their bounds in its
# settings (e.g. User.com's bulk_size).
RETENTION_BOUNDS = (timedelta(days=1), timedelta(days=3650))
INTERVAL_BOUNDS = (timedelta(minutes=1), timedelta(days=30))
JITTER_BOUNDS = (timedelta(0), timedelta(days=30))
MAX_SEND_TIME_BOUNDS = (timedelta(minutes=1), timedelta(days=30))
TIMEOUT_BOUNDS = (timedelta(seconds=1), timedelta(minutes=5))
RATE_LIMIT_BOUNDS = (0.1, 1000.0)  # requests per second
CONCURRENCY_BOUNDS = (1, 256)  # requests in flight
MIN_ACKNOWLEDGED_BOUNDS = (0, 1_000_000_000)
PENDING_OLDER_THAN_BOUNDS = (timedelta(minutes=1), timedelta(days=365))
AFTER_FAILED_RUNS_BOUNDS = (1, 1000)
# The longest audience key (SPEC 2): a trait name, a metric label and a status column; a
# destination type may allow less (Destination.key_limit: User.com's attribute names, 32).
MAX_KEY_LENGTH = 64
_KEY_RE = re.compile(r"^[a-z0-9][a-z0-9_]*$")


def default_config_path() -> Path:
    return Path(os.environ.get("SYNCD_CONFIG", "config.toml"))


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    path = Path(path) if path is not None else default_config_path()
    reader = Reader(path, os.environ if environ is None else environ)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(path, "", "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, "", f"cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "", f"malformed TOML: {exc}") from None
    top = reader.table(raw, "", {"state", "schedule", "sources", "destinations", "audiences", "guards",
                                 "metrics", "alerts"})
    state = reader.table(top.get("state", {}), "state", {"url", "retention", "auto_migrate"})
    sources = _sources(reader, top.get("sources", {}))
    destinations = _destinations(reader, top.get("destinations", {}))
    guards = _guards(reader, top.get("guards", {}))
    return Config(
        path=str(path),
        state_url=_state_url(reader, state),
        schedule=_schedule(reader, top.get("schedule", {})),
        sources=sources,
        destinations=destinations,
        audiences=_audiences(reader, top.get("audiences", []), sources, destinations, guards),
        retention=_retention(reader, state),
        auto_migrate=reader.get(state, "state", "auto_migrate", bool, True),
        guards=guards,
        metrics=_metrics(reader, top.get("metrics", {})),
        alerts=_alerts(reader, top.get("alerts")),
        environ=reader.environ,
    )


STATE_BACKENDS = ("sqlite", "postgresql")


def _state_url(reader: Reader, state: dict[str, Any]) -> str:
    url = reader.db_url(state, "state", DEFAULT_STATE_URL)
    parsed = parse_db_url(url)
    if parsed is not None and parsed.backend not in STATE_BACKENDS:
        # Checked before anything connects: syncd must not create its tables in, say, the
        # application's MySQL database (its schema is written and tested for these two).
        raise reader.error("state.url", f"the state is kept in SQLite or PostgreSQL only, not "
                                        f"{parsed.backend} (e.g. sqlite:///syncd-state.db or "
                                        "postgresql+psycopg://…); a database of any kind can be a source")
    if parsed is not None and parsed.backend == "sqlite" and sqlite_file(url) is None:
        raise reader.error("state.url", "an in-memory database keeps nothing between runs "
                                        "(every run would be a full initial send): use a file")
    return url


def _retention(reader: Reader, state: dict[str, Any]) -> timedelta:
    return reader.duration(state, "state", "retention", DEFAULT_RETENTION, RETENTION_BOUNDS)


def _metrics(reader: Reader, data: Any) -> MetricsConfig | None:
    table = reader.table(data, "metrics", {"listen"})
    listen = reader.get(table, "metrics", "listen", str, None)
    if listen is None:
        return None
    try:
        return parse_listen(listen)
    except ValueError as exc:
        raise reader.error("metrics.listen", str(exc)) from None


def _alerts(reader: Reader, data: Any) -> AlertsConfig | None:
    if data is None:
        return None
    table = reader.table(data, "alerts", {"webhook_url_env", "webhook_url_file", "format",
                                          "pending_older_than", "after_failed_runs"})
    default = AlertsConfig(Secret(""))  # only for its defaults
    kind = reader.get(table, "alerts", "format", str, default.format)
    if kind not in ALERT_FORMATS:
        raise reader.error("alerts.format", f"unknown format {kind!r} (known: json, slack)")
    runs = reader.number(table, "alerts", "after_failed_runs", int, default.after_failed_runs,
                         AFTER_FAILED_RUNS_BOUNDS)
    older = reader.duration(table, "alerts", "pending_older_than", default.pending_older_than,
                            PENDING_OLDER_THAN_BOUNDS)
    url = reader.secret_source(table, "alerts", "webhook_url")
    if url is None:
        raise reader.error("alerts", "set one of webhook_url_env or webhook_url_file")
    return AlertsConfig(webhook_url=url, format=kind, pending_older_than=older, after_failed_runs=runs)


def parse_listen(text: str) -> MetricsConfig:
    """`[metrics] listen` -> where to serve; ValueError naming what is wrong."""
    host, port = host_port(text)
    return MetricsConfig(host=host, port=port)


def _schedule(reader: Reader, data: Any) -> ScheduleConfig:
    table = reader.table(data, "schedule", {"interval", "jitter", "run_at_start", "max_send_time"})
    default = ScheduleConfig()
    return ScheduleConfig(
        interval=reader.duration(table, "schedule", "interval", default.interval, INTERVAL_BOUNDS),
        jitter=reader.duration(table, "schedule", "jitter", default.jitter, JITTER_BOUNDS),
        run_at_start=reader.get(table, "schedule", "run_at_start", bool, default.run_at_start),
        max_send_time=_max_send_time(reader, table),
    )


def _max_send_time(reader: Reader, table: dict[str, Any]) -> timedelta | None:
    if "max_send_time" not in table:
        return None
    return reader.duration(table, "schedule", "max_send_time", timedelta(0), MAX_SEND_TIME_BOUNDS)


def _guards(reader: Reader, data: Any) -> GuardConfig:
    table = reader.table(data, "guards", {"max_exit_share", "min_acknowledged"})
    default = GuardConfig()
    return GuardConfig(
        max_exit_share=_share(reader, table, "guards", default.max_exit_share),
        min_acknowledged=reader.number(table, "guards", "min_acknowledged", int, default.min_acknowledged,
                                       MIN_ACKNOWLEDGED_BOUNDS),
    )


def _share(reader: Reader, table: dict[str, Any], key: str, default: float) -> float:
    share = reader.get(table, key, "max_exit_share", float, default)
    if not 0 <= share <= 1:  # also refuses nan: every comparison with it is false
        raise reader.error(f"{key}.max_exit_share", f"must be between 0 and 1 (a share), not {share:g}")
    return float(share)


def _sources(reader: Reader, data: Any) -> dict[str, SourceConfig]:
    result = {}
    for name, value in reader.table(data, "sources", set(data) if isinstance(data, dict) else set()).items():
        key = f"sources.{name}"
        table = reader.table(value, key, {"url"})
        result[name] = SourceConfig(name=name, url=reader.db_url(table, key, None))
    return result


_DESTINATION_KEYS = {
    "type", "api_key_env", "api_key_file", "rate_limit", "concurrency", "timeout",
}


def _destinations(reader: Reader, data: Any) -> dict[str, DestinationConfig]:
    names = set(data) if isinstance(data, dict) else set()
    return {name: _destination(reader, name, value)
            for name, value in reader.table(data, "destinations", names).items()}


def _destination(reader: Reader, name: str, value: Any) -> DestinationConfig:
    """One destination: the keys every one has, and its type's own, read through its class."""
    key = f"destinations.{name}"
    if not isinstance(value, dict):
        raise reader.error(key, f"must be a table, not {kind_of(value)}")
    type_name = reader.required_str(value, key, "type")
    try:
        kind = destination_type(type_name)
    except TypeNotFound as exc:
        raise reader.error(f"{key}.type", str(exc)) from None
    table = reader.table(value, key, _DESTINATION_KEYS | {s.key for s in kind.settings})
    # The address first, then the common keys, then the type's others: the first mistake found
    # is the one a person would look at first.
    addresses = [s for s in kind.settings if isinstance(s, Address)]
    settings = {s.key: s.read(reader, table, key) for s in addresses}
    api_key = reader.secret_source(table, key, "api_key")
    if api_key is None:
        raise reader.error(key, "set one of api_key_env or api_key_file")
    timeout = reader.duration(table, key, "timeout", timedelta(seconds=10), TIMEOUT_BOUNDS)
    rate_limit = reader.number(table, key, "rate_limit", float, kind.rate_limit, RATE_LIMIT_BOUNDS)
    concurrency = reader.number(table, key, "concurrency", int, kind.concurrency, CONCURRENCY_BOUNDS)
    settings.update((s.key, s.read(reader, table, key)) for s in kind.settings if s not in addresses)
    return DestinationConfig(name=name, type=type_name, api_key=api_key, rate_limit=rate_limit,
                             concurrency=concurrency, timeout=timeout.total_seconds(), settings=settings)


_AUDIENCE_KEYS = {"name", "key", "source", "destinations", "query", "max_exit_share"}


def _audiences(
    reader: Reader,
    data: Any,
    sources: Mapping[str, SourceConfig],
    destinations: Mapping[str, DestinationConfig],
    guards: GuardConfig,
) -> tuple[AudienceConfig, ...]:
    if not isinstance(data, list):
        raise reader.error("audiences", "must be an array of tables ([[audiences]])")
    # The union over types: a key that is safe at one destination today would corrupt
    # identities when the audience is connected to another tomorrow (reserved.py).
    reserved = reserved_fields(tuple(dest.type for dest in destinations.values()))
    seen: dict[str, str] = {}
    result = []
    for index, value in enumerate(data):
        where = f"audiences[{index}]"
        table = reader.table(value, where, _AUDIENCE_KEYS)
        name = reader.required_str(table, where, "name")
        where = f"audiences[{index}] ({name})"
        key = _audience_key(reader, table, where, name, reserved)
        if key in seen:
            raise reader.error(f"{where}.key", f"{key!r} is already used by audience {seen[key]!r}")
        seen[key] = name
        source = reader.required_str(table, where, "source")
        if source not in sources:
            raise reader.error(f"{where}.source", f"no [sources.{source}] is defined")
        targets = reader.get(table, where, "destinations", list, None)
        if not targets:
            raise reader.error(f"{where}.destinations", "must list at least one destination")
        for target in targets:
            if target not in destinations:
                raise reader.error(f"{where}.destinations", f"no [destinations.{target}] is defined")
        if len(set(targets)) != len(targets):
            raise reader.error(f"{where}.destinations", "lists a destination twice")
        _check_key_length(reader, where, key, "key" not in table, [destinations[t] for t in targets])
        result.append(AudienceConfig(
            name=name, key=key, source=source, destinations=tuple(targets),
            query=reader.required_str(table, where, "query"),
            max_exit_share=_share(reader, table, where, guards.max_exit_share),
        ))
    if not result:
        raise reader.error("audiences", "at least one [[audiences]] table is required")
    return tuple(result)


def _check_key_length(reader: Reader, where: str, key: str, derived: bool,
                      targets: list[DestinationConfig]) -> None:
    """A key longer than syncd or one of the audience's destinations takes: a config error
    naming the limit and the fix (a shorter `key`), with a suggestion."""
    limit, at = MAX_KEY_LENGTH, "syncd's limit"
    for dest in targets:
        if dest.kind.key_limit is not None and dest.kind.key_limit < limit:
            limit, at = dest.kind.key_limit, f"the limit at {dest.kind.integration} (destination {dest.name})"
    if len(key) <= limit:
        return
    shown = key if len(key) <= 40 else key[:40] + "…"
    origin = " (the snake_cased name)" if derived else ""
    raise reader.error(f"{where}.key", f"{shown!r}{origin} is {len(key)} characters, over {at} of "
                                       f"{limit}: set a shorter key, e.g. key = "
                                       f"\"{key[:limit].rstrip('_')}\"")


def _audience_key(reader: Reader, table: dict[str, Any], where: str, name: str,
                  reserved: frozenset[str]) -> str:
    given = reader.get(table, where, "key", str, None)
    key = audience_key(name) if given is None else given
    origin = "" if given is not None else f" (the snake_cased name {name!r})"
    if given is not None and not given:
        raise reader.error(f"{where}.key", "must not be empty")
    if not key:  # e.g. a name in another script: snake_case keeps only a-z, 0-9 and _
        raise reader.error(f"{where}.key", f"the name {name!r} gives no key (snake_case keeps only "
                                           "a-z, 0-9 and _): set key")
    if not _KEY_RE.match(key):
        raise reader.error(f"{where}.key", f"{key!r} must be snake_case: a-z, 0-9 and _")
    if key in reserved:
        raise reader.error(f"{where}.key", f"{key!r}{origin} is a field syncd sends itself "
                                           "(reserved); choose another key")
    return key
