"""Run an audience's query against its source database and stream the members."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from syncd.identify import MAX_MESSAGE_BYTES, identify, size_of
from syncd.ledger import SnapshotCounts
from syncd.plan import Change, SnapshotRow

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
    parsed = make_url(url)
    is_file = parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:")
    if is_file and not Path(str(parsed.database)).is_file():
        raise SourceError(f"source database file {parsed.database} does not exist")
    try:
        return create_engine(url, pool_pre_ping=True)
    except (ImportError, SQLAlchemyError) as exc:
        raise SourceError(f"cannot open the source database: {exc}") from None


def now_param(snapshot_at: datetime) -> str:
    """The run's snapshot time as bound to `:now`: UTC, ISO-8601."""
    return snapshot_at.strftime("%Y-%m-%dT%H:%M:%SZ")


def stream_members(
    engine: Engine, query: str, snapshot_at: datetime, counts: SnapshotCounts
) -> Iterator[SnapshotRow]:
    """Yield the usable rows; count the others (and emails dropped as invalid) in `counts`."""
    params = {"now": now_param(snapshot_at)} if _NOW_PARAM.search(query) else {}
    try:
        with engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=2_000).execute(
                text(query), params
            )
            columns = list(result.keys())
            if not any(c in columns for c in IDENTITY_COLUMNS):
                raise SourceError(
                    f"the query returns no user_id or anonymous_id column (it returns: "
                    f"{', '.join(columns) or 'nothing'})"
                )
            extras = any(c not in KNOWN_COLUMNS for c in columns)
            # partitions() fetches yield_per rows per round trip instead of one at a time.
            for partition in result.partitions(2_000):
                counts.rows += len(partition)
                for values in partition:
                    row = to_member(dict(zip(columns, values, strict=True)), counts, extras)
                    if row is not None:
                        yield row
    except SQLAlchemyError as exc:
        raise SourceError(_one_line(exc)) from None


def to_member(row: dict[str, Any], counts: SnapshotCounts, extras: bool = True) -> SnapshotRow | None:
    """One query row -> a member, or None (counted) if it cannot be sent.

    `extras=False` says the query has no trait columns (a shortcut on the hot path).
    """
    user_id = identifier(row.get("user_id"))
    anonymous_id = identifier(row.get("anonymous_id"))
    if user_id is None and anonymous_id is None:
        counts.no_identifier += 1
        return None
    email = _text(row.get("email"))
    if email is not None and not _EMAIL.match(email):
        counts.invalid_email += 1
        email = None
    member = SnapshotRow(
        user_id=user_id, anonymous_id=anonymous_id, email=email, url=_clean(_text(row.get("url"))),
        traits={k: _clean(v) for k, v in row.items() if k not in KNOWN_COLUMNS} if extras else {},
    )
    if member.approximate_size() > LARGE_ROW and _too_large(member):
        counts.too_large += 1
        return None
    return member


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


def _too_large(member: SnapshotRow) -> bool:
    change = Change(subject=member.subject, user_id=member.user_id, anonymous_id=member.anonymous_id,
                    email=member.email, seq=0, value=True, url=member.url, traits=member.traits)
    message = identify(change, "x" * 64, "destination", "Destination", datetime.now(UTC))
    return size_of(message) > MAX_MESSAGE_BYTES


def _one_line(exc: SQLAlchemyError) -> str:
    """The database's own message, without SQLAlchemy's multi-line decoration."""
    message = str(getattr(exc, "orig", None) or exc)
    return " ".join(message.split())[:300]
