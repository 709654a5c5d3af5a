"""`syncd check [--connect]`: is the config good, and can syncd reach what it names?

Loading the config already validated it (a mistake exits 2 before this runs). With
`--connect`, each source is connected to, each audience's query runs wrapped in
`LIMIT 0` (no row is fetched) to see its columns, and each destination gets one request
that changes nothing: User.com lists attributes (so a refused key shows), Nat has no
read-only call, so only reachability is known. No Identify is ever sent, and the state
database is not opened.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from syncd import __version__
from syncd.config import AudienceConfig, Config, DestinationConfig
from syncd.delivery.destinations import make_destination
from syncd.delivery.sender import reason_of
from syncd.errors import SourceError
from syncd.render import one_line, redact
from syncd.source import open_source, query_columns
from syncd.state.engine import now


@dataclass(frozen=True)
class Check:
    """One thing checked: what (`check` and its names), whether it is fine, and why."""

    check: str  # config | source | audience | destination
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
                 "destination": self.destination}.get(self.check)
        return f"{self.check} {value}" if value else self.check


def check(config: Config, connect: bool = False,
          transport: httpx.BaseTransport | None = None) -> list[Check]:
    summary = f"config OK: {len(config.audiences)} audiences, {len(config.destinations)} destinations"
    checks = [Check("config", True, summary)]
    if connect:
        checks += check_sources(config)
        checks += [check_destination(d, transport) for d in config.destinations.values()]
    return checks


def format_checks(checks: Sequence[Check]) -> str:
    lines = [checks[0].message] + [
        f"{c.name}: {'ok' if c.ok else 'FAILED'}: {c.message}" for c in checks[1:]
    ]
    failed = [c.name for c in checks if not c.ok]
    if failed:
        lines.append(f"{len(failed)} check(s) failed: {', '.join(failed)}")
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
            reason = one_line(getattr(exc, "orig", None) or exc, 300)
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
    except SourceError as exc:
        return Check("audience", False, f"query failed: {exc}", **where)
    return Check("audience", True, f"query OK; columns: {', '.join(columns)}", **where)



# --- destinations -----------------------------------------------------------------------


def check_destination(config: DestinationConfig, transport: httpx.BaseTransport | None = None) -> Check:
    """One request that changes nothing; a refused key or an unreachable service fails."""
    destination = make_destination(config)
    secrets = destination.secrets()
    headers = {**destination.headers(), "User-Agent": f"syncd/{__version__}"}
    url = config.url + "attributes/" if config.type == "usercom" else config.url
    try:
        with httpx.Client(headers=headers, timeout=config.timeout, transport=transport) as client:
            response = client.get(url)
    except httpx.HTTPError as exc:
        reason = redact(one_line(exc) or type(exc).__name__, secrets)
        return Check("destination", False, f"cannot reach {url}: {type(exc).__name__}: {reason}",
                     destination=config.name)
    ok, message = (_usercom if config.type == "usercom" else _nat)(response)
    return Check("destination", ok, redact(message, secrets), destination=config.name)


def _usercom(response: httpx.Response) -> tuple[bool, str]:
    status = response.status_code
    if status in (401, 403):
        return False, f"User.com refused the API key (HTTP {status}: {reason_of(response)})"
    if not response.is_success:
        return False, f"listing attributes answered HTTP {status}: {reason_of(response)}"
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return False, f"the answer was not JSON (HTTP {status}); is base_url the API's address?"
    return True, "reachable; the API key is accepted (listed attributes)"


def _nat(response: httpx.Response) -> tuple[bool, str]:
    status = response.status_code
    if status >= 500:
        return False, f"answered HTTP {status}: {reason_of(response)}"
    return True, f"reachable (HTTP {status}); Nat has no read-only call to check the key"


