"""Run an audience's query against its source database and stream the members."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import SQLAlchemyError

from syncd.db import sqlite_file
from syncd.identify import MAX_MESSAGE_BYTES, identify, size_of
from syncd.ledger import SnapshotCounts
from syncd.plan import Change, SnapshotRow, traits_json
from syncd.progress import Task

IDENTITY_COLUMNS = ("user_id", "anonymous_id")
KNOWN_COLUMNS = (*IDENTITY_COLUMNS, "email", "url")
_NOW_PARAM = re.compile(r"(?<![:\w]):now\b")
# Nat and User.com refuse what is not an address; such an email is dropped and counted.
_EMAIL = re.compile(r"^[^@\s\x00]+@[^@\s\x00]+\.[^@\s\x00]+$")
LARGE_ROW = 8 * 1024  # rows smaller than this cannot make a 32 KB message


class SourceError(Exception):
    """The audience's query could not be run: this audience fails, the others go on."""


def open_source(url: str) -> Engine:
    """An engine for a source database; a missing SQLite file is an error, not a new empty file."""
    path = sqlite_file(url)
    if path is not None and not Path(path).is_file():
        raise SourceError(f"source database file {path} does not exist")
    try:
        return create_engine(url, pool_pre_ping=True)
    except (ImportError, SQLAlchemyError) as exc:
        raise SourceError(f"cannot open the source database: {exc}") from None


def now_param(snapshot_at: datetime) -> str:
    """The run's snapshot time as bound to `:now`: UTC, ISO-8601."""
    return snapshot_at.strftime("%Y-%m-%dT%H:%M:%SZ")


def stream_members(
    engine: Engine, query: str, snapshot_at: datetime, counts: SnapshotCounts, task: Task | None = None
) -> Iterator[SnapshotRow]:
    """Yield the usable rows; count the others (and emails dropped as invalid) in `counts`.
    `task`, if given, advances by every row read (skipped ones included)."""
    params = {"now": now_param(snapshot_at)} if _NOW_PARAM.search(query) else {}
    try:
        with engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=2_000).execute(
                text(query), params
            )
            columns = Columns(list(result.keys()))
            # partitions() fetches yield_per rows per round trip instead of one at a time.
            for partition in result.partitions(2_000):
                counts.rows += len(partition)
                for values in partition:
                    member = to_member(values, columns, counts)
                    if member is not None:
                        yield member
                if task is not None:
                    task.advance(len(partition))
    except SQLAlchemyError as exc:
        raise SourceError(_one_line(exc)) from None


class Columns:
    """Where the known columns sit in the query's rows; every other column is an extra trait."""

    def __init__(self, names: list[str]) -> None:
        if not any(c in names for c in IDENTITY_COLUMNS):
            raise SourceError(
                f"the query returns no user_id or anonymous_id column (it returns: "
                f"{', '.join(names) or 'nothing'})"
            )
        at = {name: i for i, name in enumerate(names)}  # a repeated name: the last one counts
        self.user_id, self.anonymous_id, self.email, self.url = (at.get(c) for c in KNOWN_COLUMNS)
        self.extras = [(name, i) for name, i in at.items() if name not in KNOWN_COLUMNS]


def to_member(values: Sequence[Any], at: Columns, counts: SnapshotCounts) -> SnapshotRow | None:
    """One query row -> a member, or None (counted) if it cannot be sent.

    This runs once per row of million-row snapshots: positional access, no dict per row
    unless the query has extra trait columns."""
    user_id = None if at.user_id is None else identifier(values[at.user_id])
    anonymous_id = None if at.anonymous_id is None else identifier(values[at.anonymous_id])
    if user_id is None and anonymous_id is None:
        counts.no_identifier += 1
        return None
    email = None if at.email is None else _text(values[at.email])
    if email is not None and not _EMAIL.match(email):
        counts.invalid_email += 1
        email = None
    url = None if at.url is None else _clean(_text(values[at.url]))
    traits = {name: _clean(values[i]) for name, i in at.extras} if at.extras else None
    size = len(user_id or "") + len(anonymous_id or "") + len(email or "") + len(url or "")
    if traits:
        size += sum(len(name) + len(str(value)) for name, value in traits.items())
    if size > LARGE_ROW and _too_large(user_id, anonymous_id, email, url, traits or {}):
        counts.too_large += 1
        return None
    subject = f"u:{user_id}" if user_id else f"a:{anonymous_id}"
    return SnapshotRow(subject, user_id, anonymous_id, email, url, traits_json(traits) if traits else None)


def identifier(value: Any) -> str | None:
    """An identifier as text: 42 and 42.0 are "42"; empty, NUL-bearing or boolean ids are none."""
    if type(value) is str:  # the common case, on the hot path of million-row snapshots
        value = value.strip()
        return value if value and "\x00" not in value else None
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, float | Decimal) and _is_whole(value):
        value = int(value)
    text_value = _text(value)
    return None if text_value is None or "\x00" in text_value else text_value


def _is_whole(value: float | Decimal) -> bool:
    if isinstance(value, Decimal):
        return value.is_finite() and value == value.to_integral_value()
    return value.is_integer()


def _text(value: Any) -> str | None:
    if type(value) is str:
        return value.strip() or None
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    text_value = str(value).strip()
    return text_value or None


def _clean(value: Any) -> Any:
    """PostgreSQL text cannot hold NUL: drop it from extra traits."""
    return value.replace("\x00", "") if isinstance(value, str) else value


def _too_large(user_id: str | None, anonymous_id: str | None, email: str | None, url: str | None,
               traits: dict[str, Any]) -> bool:
    change = Change(subject="", user_id=user_id, anonymous_id=anonymous_id, email=email, seq=0,
                    value=True, url=url, traits=traits)
    message = identify(change, "x" * 64, "destination", "Destination", datetime.now(UTC))
    return size_of(message) > MAX_MESSAGE_BYTES


def _one_line(exc: SQLAlchemyError) -> str:
    """The database's own message, without SQLAlchemy's multi-line decoration."""
    message = str(getattr(exc, "orig", None) or exc)
    return " ".join(message.split())[:300]
