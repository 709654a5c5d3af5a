"""`syncd check [--connect]`: is the config good, and can syncd reach what it names?

Loading the config already validated it (a mistake exits 2 before this runs). With
`--connect`, each source is connected to, each audience's query runs wrapped in
`LIMIT 0` (no row is fetched) to see its columns, and each destination is probed by its own
class (`Destination.probe`) with read-only requests: User.com lists attributes (so a refused
key shows), Nat has no read-only call, so only reachability is known. No Identify is ever
sent, and the state database is not opened. With `--alert`, one test message goes to the
[alerts] webhook. A config with [alerts] whose webhook URL cannot be read is a config error
(exit 2), as it would be for `run`.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from syncd import __version__
from syncd.config import AlertsConfig, AudienceConfig, Config, DestinationConfig
from syncd.delivery.destinations import make_destination
from syncd.delivery.sender import answer_of, http_request
from syncd.delivery.wire import Answer, Request
from syncd.errors import ColumnError, SourceError, UsageError
from syncd.render import database_error, one_line, plural, redact
from syncd.run.alerts import send_test_message
from syncd.source import open_source, query_columns
from syncd.state.engine import now


@dataclass(frozen=True)
class Check:
    """One thing checked: what (`check` and its names), whether it is fine, and why."""

    check: str  # config | source | audience | destination | alert
    ok: bool
    message: str
    source: str | None = None
    audience: str | None = None
    destination: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"check": self.check, "source": self.source, "audience": self.audience,
                "destination": self.destination, "ok": self.ok, "message": self.message}

    @property
    def name(self) -> str:
        """'audience buyers', 'destination nat', ...: how the human output names it."""
        value = {"source": self.source, "audience": self.audience,
                 "destination": self.destination, "alert": "webhook"}.get(self.check)
        return f"{self.check} {value}" if value else self.check


def check(config: Config, connect: bool = False, alert: bool = False,
          transport: httpx.BaseTransport | None = None) -> list[Check]:
    if alert and config.alerts is None:
        raise UsageError("check --alert: the config has no [alerts] table, so there is no webhook to test")
    summary = (f"config OK: {plural(len(config.audiences), 'audience')}, "
               f"{plural(len(config.destinations), 'destination')}")
    checks = [Check("config", True, summary)]
    if connect:
        checks += check_sources(config)
        checks += [check_destination(d, transport) for d in config.destinations.values()]
    if alert and config.alerts is not None:
        checks.append(check_alert(config.alerts))
    return checks


def check_alert(alerts: AlertsConfig) -> Check:
    """One test message to the webhook ([alerts] format); it must answer 2xx."""
    failure = send_test_message(alerts)
    if failure is not None:
        return Check("alert", False, f"test message not delivered: webhook {failure}")
    return Check("alert", True, f"test message delivered ({alerts.format} format)")


def format_checks(checks: Sequence[Check]) -> str:
    lines = [checks[0].message] + [
        f"{c.name}: {'ok' if c.ok else 'FAILED'}: {c.message}" for c in checks[1:]
    ]
    failed = [c.name for c in checks if not c.ok]
    if failed:
        lines.append(f"{plural(len(failed), 'check')} failed: {', '.join(failed)}")
    return "\n".join(lines)


# --- sources and audience queries --------------------------------------------------------


def check_sources(config: Config) -> Iterator[Check]:
    """Each source, then each of its audiences' queries (not run if the source is unreachable)."""
    for name, source in config.sources.items():
        audiences = [a for a in config.audiences if a.source == name]
        try:
            engine = open_source(source.url)
        except SourceError as exc:
            yield from _unreachable(name, audiences, str(exc))
            continue
        try:
            with engine.connect() as conn:
                yield Check("source", True, "connected", source=name)
                for audience in audiences:
                    yield _check_query(conn, audience)
        except SQLAlchemyError as exc:  # connecting failed (a failing query is caught per audience)
            reason = database_error(exc)
            yield from _unreachable(name, audiences, f"cannot connect: {reason}")
        finally:
            engine.dispose()


def _unreachable(name: str, audiences: Sequence[AudienceConfig], reason: str) -> Iterator[Check]:
    yield Check("source", False, reason, source=name)
    for audience in audiences:
        yield Check("audience", False, f"not checked: source {name!r} failed", source=name,
                    audience=audience.key)


def _check_query(conn: Connection, audience: AudienceConfig) -> Check:
    """The query's columns, as a run checks them, without fetching a row."""
    where = {"source": audience.source, "audience": audience.key}
    try:
        columns = query_columns(conn, audience.query, now(), audience.key)
    except ColumnError as exc:
        return Check("audience", False, f"the query runs, but its columns cannot be sent: {exc}", **where)
    except SourceError as exc:
        return Check("audience", False, f"query failed: {exc}", **where)
    return Check("audience", True, f"query OK; columns: {', '.join(columns)}", **where)



# --- destinations -----------------------------------------------------------------------


def check_destination(config: DestinationConfig, transport: httpx.BaseTransport | None = None) -> Check:
    """The destination's own probe, read-only; a refused key or an unreachable service fails."""
    destination = make_destination(config)
    secrets = destination.secrets()
    headers = {**destination.headers(), "User-Agent": f"syncd/{__version__}"}
    try:
        with httpx.Client(headers=headers, timeout=config.timeout, transport=transport) as client:
            ok, message = destination.probe(partial(_call, client))
    except _Unreachable as exc:
        reason = redact(_why(exc.error, exc.url), secrets)
        return Check("destination", False, f"cannot reach {exc.url}: {reason}", destination=config.name)
    return Check("destination", ok, redact(message, secrets), destination=config.name)


def _why(error: httpx.HTTPError, url: str) -> str:
    """Why a destination could not be reached, named as a person fixes it: a name that does
    not resolve (DNS), a TLS handshake that failed (a certificate, or https to a plain-HTTP
    port), else the error's kind and text."""
    detail = one_line(error) or type(error).__name__
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, socket.gaierror):
            return f"DNS: {urlsplit(url).hostname} does not resolve ({detail})"
        if isinstance(cause, ssl.SSLError):
            return f"TLS handshake failed ({detail})"
        cause = cause.__cause__ or cause.__context__
    return f"{type(error).__name__}: {detail}"


class _Unreachable(Exception):
    def __init__(self, url: str, error: httpx.HTTPError) -> None:
        super().__init__(url)
        self.url, self.error = url, error


def _call(client: httpx.Client, request: Request) -> Answer:
    """One request of a probe; a destination that cannot be reached ends the probe."""
    try:
        response = client.send(http_request(client, request))
    except httpx.HTTPError as exc:
        raise _Unreachable(request.url, exc) from None
    return answer_of(response)
