"""config.toml -> frozen, validated objects.

Every mistake is a ConfigError naming the file, the key path and what is wrong,
raised before any database or network is touched. Secrets are not read when the file is
loaded: the config keeps where each one comes from (a SecretSource: environment variable or
file), and only the commands that send resolve them (Config.with_secrets), so the read-only
commands work where the keys are not available (under systemd they exist only while the
service runs). A resolved key is wrapped in Secret, which never prints.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from syncd.dburl import parse_db_url, sqlite_file
from syncd.delivery.destinations.facts import FACTS, Facts
from syncd.errors import ConfigError
from syncd.keys import audience_key
from syncd.render import spelled
from syncd.reserved import is_reserved

log = logging.getLogger("syncd")

DEFAULT_STATE_URL = "sqlite:///syncd-state.db"
DEFAULT_RETENTION = timedelta(days=30)
# Bounds of the numbers in the file (README, Configuration). A value outside them is a config
# error at start, never a scheduler thread that dies inside a live daemon (datetime overflow)
# or a pacer that waits for ever.
RETENTION_BOUNDS = (timedelta(days=1), timedelta(days=3650))
INTERVAL_BOUNDS = (timedelta(minutes=1), timedelta(days=30))
JITTER_BOUNDS = (timedelta(0), timedelta(days=30))
MAX_SEND_TIME_BOUNDS = (timedelta(minutes=1), timedelta(days=30))
TIMEOUT_BOUNDS = (timedelta(seconds=1), timedelta(minutes=5))
RATE_LIMIT_BOUNDS = (0.1, 1000.0)  # requests per second
CONCURRENCY_BOUNDS = (1, 256)  # requests in flight
BULK_SIZE_BOUNDS = (1, 1000)  # users per mass update (User.com)
MIN_ACKNOWLEDGED_BOUNDS = (0, 1_000_000_000)
PENDING_OLDER_THAN_BOUNDS = (timedelta(minutes=1), timedelta(days=365))
AFTER_FAILED_RUNS_BOUNDS = (1, 1000)
_KEY_RE = re.compile(r"^[a-z0-9][a-z0-9_]*$")
_LISTEN_RE = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9.-]+)):(?P<port>\d{1,5})$")
_DURATION_RE = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


class Secret:
    """An API key. Its repr and str never show the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class SecretSource:
    """Where a secret comes from: an environment variable or a file (absolute path).

    Loading the config records only this; `resolve` reads the value, for the commands that
    send. `key` is the key path that named it (e.g. "destinations.nat.api_key_env"), for errors.
    """

    config_path: str
    key: str
    env: str | None = None
    file: Path | None = None

    def resolve(self, environ: Mapping[str, str]) -> Secret:
        """The value as a Secret; a ConfigError naming the file, key path and variable or file."""
        if self.env is not None:
            value = environ.get(self.env, "").strip()
            if not value:
                raise ConfigError(self.config_path, self.key, f"environment variable {self.env} is not set")
            return Secret(value)
        assert self.file is not None
        try:
            with self.file.open(encoding="utf-8") as handle:
                mode = os.fstat(handle.fileno()).st_mode
                value = handle.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            problem = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError(self.config_path, self.key, f"cannot read {self.file}: {problem}") from None
        if not value:
            raise ConfigError(self.config_path, self.key, f"{self.file} is empty")
        if mode & (stat.S_IRGRP | stat.S_IROTH):
            log.warning("%s: %s: %s is readable by other users (mode %s); chmod 600 it",
                        self.config_path, self.key, self.file, stat.filemode(mode))
        return Secret(value)


def resolve_secret(value: Secret | SecretSource, environ: Mapping[str, str]) -> Secret:
    """A Secret as is; a SecretSource read now (ConfigError if it cannot be)."""
    return value if isinstance(value, Secret) else value.resolve(environ)


@dataclass(frozen=True)
class ScheduleConfig:
    interval: timedelta = timedelta(hours=2)
    jitter: timedelta = timedelta(hours=1)
    run_at_start: bool = True
    max_send_time: timedelta | None = None  # None: the interval

    @property
    def send_limit(self) -> timedelta:
        """How long a run may go on starting new sends: what is left waits for the next run."""
        return self.max_send_time or self.interval


@dataclass(frozen=True)
class SourceConfig:
    name: str
    url: str


@dataclass(frozen=True)
class DestinationConfig:
    name: str
    type: str
    url: str  # Nat: the endpoint; User.com: base_url, always ending in "/"
    api_key: Secret | SecretSource  # a SecretSource until Config.with_secrets() resolves it
    rate_limit: float | None  # requests per second (config: per-type default); None = unpaced
    concurrency: int
    timeout: float  # seconds per request
    bulk_size: int | None = None  # users per mass update; None: the type has none (Nat)

    @property
    def facts(self) -> Facts:
        """What syncd knows about this destination's type (delivery/destinations/facts.py)."""
        return FACTS[self.type]

    @property
    def resolved_key(self) -> Secret:
        """The API key, for the code that sends: Config.with_secrets() resolved it first."""
        if not isinstance(self.api_key, Secret):
            raise RuntimeError(f"the API key of destination {self.name!r} was not resolved "
                               "(Config.with_secrets)")
        return self.api_key


@dataclass(frozen=True)
class GuardConfig:
    """When a run holds an audience's exits instead of sending them (see guards.py)."""

    max_exit_share: float = 0.5  # of the members a destination holds as `true`
    min_acknowledged: int = 10  # smaller audiences are never held


@dataclass(frozen=True)
class AudienceConfig:
    name: str
    key: str
    source: str
    destinations: tuple[str, ...]
    query: str
    max_exit_share: float = GuardConfig.max_exit_share  # [guards] value unless the audience sets its own


@dataclass(frozen=True)
class MetricsConfig:
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


ALERT_FORMATS = ("json", "slack")


@dataclass(frozen=True)
class AlertsConfig:
    """[alerts]: where and when to push alerts (see run/alerts.py)."""

    # A Slack webhook URL is a credential: never logged, shown or stored. A SecretSource until
    # Config.with_secrets() resolves it, as the destinations' keys.
    webhook_url: Secret | SecretSource
    format: str = "json"
    pending_older_than: timedelta = timedelta(hours=6)
    after_failed_runs: int = 2

    def with_secret(self, config_path: str, environ: Mapping[str, str]) -> AlertsConfig:
        """The webhook URL read and checked; a ConfigError that says where it came from, never what it is."""
        url = resolve_secret(self.webhook_url, environ)
        parts = urlsplit(url.reveal())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            where = self.webhook_url.key if isinstance(self.webhook_url, SecretSource) else "alerts"
            raise ConfigError(config_path, where, "the webhook URL is not an http(s) URL")
        return replace(self, webhook_url=url)

    @property
    def resolved_url(self) -> Secret:
        """The webhook URL, for the code that sends: Config.with_secrets() resolved it first."""
        if not isinstance(self.webhook_url, Secret):
            raise RuntimeError("the alerts webhook URL was not resolved (Config.with_secrets)")
        return self.webhook_url


@dataclass(frozen=True)
class Config:
    path: str
    state_url: str
    schedule: ScheduleConfig
    sources: Mapping[str, SourceConfig]
    destinations: Mapping[str, DestinationConfig]
    audiences: tuple[AudienceConfig, ...]
    retention: timedelta = DEFAULT_RETENTION  # run history and finished ledger rows older than this go
    auto_migrate: bool = True  # sending commands create/upgrade the state schema; False: only `migrate`
    guards: GuardConfig = GuardConfig()
    metrics: MetricsConfig | None = None  # `syncd run` serves /metrics when set
    alerts: AlertsConfig | None = None  # alerts are pushed after each run when set
    # Where with_secrets() looks up api_key_env: the process environment unless load_config
    # was given another. Never printed (it holds the keys).
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ, repr=False, compare=False)

    def with_secrets(self) -> Config:
        """This config with every secret read, for the commands that send. Raises the first
        ConfigError (missing variable or file); call it before any database or network work.
        Reading again is a no-op: resolved secrets are kept."""
        destinations = {name: replace(dest, api_key=resolve_secret(dest.api_key, self.environ))
                        for name, dest in self.destinations.items()}
        alerts = self.alerts and self.alerts.with_secret(self.path, self.environ)
        return replace(self, destinations=destinations, alerts=alerts)


def default_config_path() -> Path:
    return Path(os.environ.get("SYNCD_CONFIG", "config.toml"))


def parse_duration(text: str) -> timedelta:
    """'90s', '15m', '2h', '1h30m', '1d' -> timedelta; ValueError otherwise."""
    match = _DURATION_RE.match(text.strip()) if text.strip() else None
    if match is None:
        raise ValueError(f"{text!r} is not a duration like '90s', '15m', '2h' or '1h30m'")
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    try:
        return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    except OverflowError:
        raise ValueError(f"{text!r} is far too long") from None


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else f"{value:_}"



class _Reader:
    """Walks the TOML tree, remembering the file for error messages."""

    def __init__(self, path: Path, environ: Mapping[str, str]) -> None:
        self.path = path
        self.environ = environ

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.path, key, problem)

    def table(self, data: Any, key: str, allowed: set[str]) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise self.error(key, f"must be a table, not {_kind(data)}")
        for name in data:
            if name not in allowed:
                where = f"{key}.{name}" if key else name
                raise self.error(where, f"unknown key (allowed: {', '.join(sorted(allowed))})")
        return data

    def get(self, data: dict[str, Any], key: str, field: str, kind: type, default: Any) -> Any:
        value = data.get(field, default)
        if value is None:
            return None
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(f"{key}.{field}", f"must be {kind.__name__}, not {_kind(value)}")
        return value

    def required_str(self, data: dict[str, Any], key: str, field: str) -> str:
        value = self.get(data, key, field, str, None)
        if value is None or not value.strip():
            raise self.error(f"{key}.{field}", "is required")
        return str(value)

    def duration(self, data: dict[str, Any], key: str, field: str, default: timedelta,
                 bounds: tuple[timedelta, timedelta]) -> timedelta:
        text = self.get(data, key, field, str, None)
        if text is None:
            return default
        try:
            value = parse_duration(text)
        except ValueError as exc:
            raise self.error(f"{key}.{field}", str(exc)) from None
        low, high = bounds
        if not low <= value <= high:
            raise self.error(f"{key}.{field}", f"must be between {spelled(low)} and "
                                               f"{spelled(high)}, not {text!r}")
        return value

    def number(self, data: dict[str, Any], key: str, field: str, kind: type, default: Any,
               bounds: tuple[Any, Any]) -> Any:
        """An int or float within bounds (nan and inf never are)."""
        value = self.get(data, key, field, kind, default)
        low, high = bounds
        if not low <= value <= high:  # nan too: every comparison with it is false
            raise self.error(f"{key}.{field}", f"must be between {_number(low)} and {_number(high)}, "
                                               f"not {_number(value)}")
        return value

    def secret_source(self, table: dict[str, Any], key: str, prefix: str) -> SecretSource | None:
        """`<prefix>_env` or `<prefix>_file` (not both) -> where the secret comes from; None if
        neither is set. A relative file is relative to the config file's folder."""
        env_name = self.get(table, key, f"{prefix}_env", str, None)
        file_name = self.get(table, key, f"{prefix}_file", str, None)
        if env_name is not None and file_name is not None:
            raise self.error(key, f"set only one of {prefix}_env or {prefix}_file")
        if env_name is not None:
            if not env_name.strip():
                raise self.error(f"{key}.{prefix}_env", "must name an environment variable")
            return SecretSource(str(self.path), f"{key}.{prefix}_env", env=env_name.strip())
        if file_name is not None:
            if not file_name.strip():
                raise self.error(f"{key}.{prefix}_file", "must name a file")
            file = (self.path.parent / file_name).absolute()  # an absolute name stays as it is
            return SecretSource(str(self.path), f"{key}.{prefix}_file", file=file)
        return None

    def db_url(self, data: dict[str, Any], key: str, default: str | None) -> str:
        url = self.get(data, key, "url", str, default)
        if url is None:
            raise self.error(f"{key}.url", "is required")
        parsed = parse_db_url(url)
        if parsed is None:
            raise self.error(f"{key}.url", f"{_redact_url(url)!r} is not a database URL")
        if parsed.backend == "postgres":  # SQLAlchemy dropped that alias: "Can't load plugin"
            raise self.error(f"{key}.url", "SQLAlchemy has no 'postgres' dialect: write "
                                           "postgresql+psycopg://…")
        return str(url)


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    path = Path(path) if path is not None else default_config_path()
    reader = _Reader(path, os.environ if environ is None else environ)
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


def _state_url(reader: _Reader, state: dict[str, Any]) -> str:
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


def _retention(reader: _Reader, state: dict[str, Any]) -> timedelta:
    return reader.duration(state, "state", "retention", DEFAULT_RETENTION, RETENTION_BOUNDS)


def _metrics(reader: _Reader, data: Any) -> MetricsConfig | None:
    table = reader.table(data, "metrics", {"listen"})
    listen = reader.get(table, "metrics", "listen", str, None)
    if listen is None:
        return None
    try:
        return parse_listen(listen)
    except ValueError as exc:
        raise reader.error("metrics.listen", str(exc)) from None


def _alerts(reader: _Reader, data: Any) -> AlertsConfig | None:
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
    """'127.0.0.1:9464', '[::1]:9464', 'localhost:9464' -> host and port; ValueError otherwise."""
    hint = f"{text!r} is not host:port (e.g. \"127.0.0.1:9464\", \"[::1]:9464\", \"0.0.0.0:9464\")"
    match = _LISTEN_RE.match(text.strip())
    if match is None:
        raise ValueError(hint)
    host = match.group("v6") or match.group("host")
    port = int(match.group("port"))
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range (1-65535)")
    return MetricsConfig(host=host, port=port)


def _schedule(reader: _Reader, data: Any) -> ScheduleConfig:
    table = reader.table(data, "schedule", {"interval", "jitter", "run_at_start", "max_send_time"})
    default = ScheduleConfig()
    return ScheduleConfig(
        interval=reader.duration(table, "schedule", "interval", default.interval, INTERVAL_BOUNDS),
        jitter=reader.duration(table, "schedule", "jitter", default.jitter, JITTER_BOUNDS),
        run_at_start=reader.get(table, "schedule", "run_at_start", bool, default.run_at_start),
        max_send_time=_max_send_time(reader, table),
    )


def _max_send_time(reader: _Reader, table: dict[str, Any]) -> timedelta | None:
    if "max_send_time" not in table:
        return None
    return reader.duration(table, "schedule", "max_send_time", timedelta(0), MAX_SEND_TIME_BOUNDS)


def _guards(reader: _Reader, data: Any) -> GuardConfig:
    table = reader.table(data, "guards", {"max_exit_share", "min_acknowledged"})
    default = GuardConfig()
    return GuardConfig(
        max_exit_share=_share(reader, table, "guards", default.max_exit_share),
        min_acknowledged=reader.number(table, "guards", "min_acknowledged", int, default.min_acknowledged,
                                       MIN_ACKNOWLEDGED_BOUNDS),
    )


def _share(reader: _Reader, table: dict[str, Any], key: str, default: float) -> float:
    share = reader.get(table, key, "max_exit_share", float, default)
    if not 0 <= share <= 1:  # also refuses nan: every comparison with it is false
        raise reader.error(f"{key}.max_exit_share", f"must be between 0 and 1 (a share), not {share:g}")
    return float(share)


def _sources(reader: _Reader, data: Any) -> dict[str, SourceConfig]:
    result = {}
    for name, value in reader.table(data, "sources", set(data) if isinstance(data, dict) else set()).items():
        key = f"sources.{name}"
        table = reader.table(value, key, {"url"})
        result[name] = SourceConfig(name=name, url=reader.db_url(table, key, None))
    return result


_DESTINATION_KEYS = {
    "type", "api_key_env", "api_key_file", "rate_limit", "concurrency", "timeout",
}


def _destinations(reader: _Reader, data: Any) -> dict[str, DestinationConfig]:
    names = set(data) if isinstance(data, dict) else set()
    result = {}
    for name, value in reader.table(data, "destinations", names).items():
        key = f"destinations.{name}"
        if not isinstance(value, dict):
            raise reader.error(key, f"must be a table, not {_kind(value)}")
        kind = reader.required_str(value, key, "type")
        facts = FACTS.get(kind)
        if facts is None:
            raise reader.error(f"{key}.type", f"unknown type {kind!r} (known: {', '.join(FACTS)})")
        allowed = _DESTINATION_KEYS | {facts.url_field} | ({"bulk_size"} if facts.bulk_size else set())
        table = reader.table(value, key, allowed)
        url = _http_url(reader, table, key, facts.url_field)
        if facts.base_url and not url.endswith("/"):
            url += "/"
        api_key = reader.secret_source(table, key, "api_key")
        if api_key is None:
            raise reader.error(key, "set one of api_key_env or api_key_file")
        timeout = reader.duration(table, key, "timeout", timedelta(seconds=10), TIMEOUT_BOUNDS)
        result[name] = DestinationConfig(
            name=name, type=kind, url=url, api_key=api_key,
            rate_limit=reader.number(table, key, "rate_limit", float, facts.rate_limit, RATE_LIMIT_BOUNDS),
            concurrency=reader.number(table, key, "concurrency", int, facts.concurrency,
                                      CONCURRENCY_BOUNDS),
            timeout=timeout.total_seconds(),
            bulk_size=reader.number(table, key, "bulk_size", int, facts.bulk_size, BULK_SIZE_BOUNDS)
            if facts.bulk_size else None,
        )
    return result


def _http_url(reader: _Reader, table: dict[str, Any], key: str, field: str) -> str:
    url = reader.required_str(table, key, field)
    problem = http_url_problem(url)
    if problem is not None:
        raise reader.error(f"{key}.{field}", problem)
    return url


def http_url_problem(url: str) -> str | None:
    """Why `url` is not an http(s) URL syncd may send to, or None. Never echoes user information.

    User information ("user:pass@") is refused: httpx would send it as Basic credentials
    instead of the API key, and the 401 that follows would blame the key.
    """
    parts = urlsplit(url.strip())
    if "@" in parts.netloc:
        return ("must not contain user information (user:password@): "
                "put the key in api_key_env or api_key_file")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{url!r} is not an http(s) URL"
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number in range
    except ValueError:
        return f"{url!r} has an invalid port"
    return None


_AUDIENCE_KEYS = {"name", "key", "source", "destinations", "query", "max_exit_share"}


def _audiences(
    reader: _Reader,
    data: Any,
    sources: Mapping[str, SourceConfig],
    destinations: Mapping[str, DestinationConfig],
    guards: GuardConfig,
) -> tuple[AudienceConfig, ...]:
    if not isinstance(data, list):
        raise reader.error("audiences", "must be an array of tables ([[audiences]])")
    seen: dict[str, str] = {}
    result = []
    for index, value in enumerate(data):
        where = f"audiences[{index}]"
        table = reader.table(value, where, _AUDIENCE_KEYS)
        name = reader.required_str(table, where, "name")
        where = f"audiences[{index}] ({name})"
        key = _audience_key(reader, table, where, name)
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
        result.append(AudienceConfig(
            name=name, key=key, source=source, destinations=tuple(targets),
            query=reader.required_str(table, where, "query"),
            max_exit_share=_share(reader, table, where, guards.max_exit_share),
        ))
    if not result:
        raise reader.error("audiences", "at least one [[audiences]] table is required")
    return tuple(result)


def _audience_key(reader: _Reader, table: dict[str, Any], where: str, name: str) -> str:
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
    if is_reserved(key):
        raise reader.error(f"{where}.key", f"{key!r}{origin} is a field syncd sends itself "
                                           "(reserved); choose another key")
    return key


def _kind(value: Any) -> str:
    return {dict: "a table", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _redact_url(url: str) -> str:
    """Hide a password in a database URL before it goes into a message."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)
