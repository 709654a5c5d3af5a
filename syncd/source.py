"""Run an audience's query against its source database and stream the members."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from syncd.plan import SnapshotRow

IDENTITY_COLUMNS = ("user_id", "anonymous_id")
KNOWN_COLUMNS = (*IDENTITY_COLUMNS, "email", "url")
_NOW_PARAM = re.compile(r"(?<![:\w]):now\b")


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


def stream_members(engine: Engine, query: str, snapshot_at: datetime) -> Iterator[SnapshotRow | None]:
    """Yield a SnapshotRow per usable row, None per row without an identifier."""
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
            for row in result:
                yield _to_member(dict(zip(columns, row, strict=True)))
    except SQLAlchemyError as exc:
        raise SourceError(_one_line(exc)) from None


def _to_member(row: dict[str, Any]) -> SnapshotRow | None:
    user_id = _identifier(row.get("user_id"))
    anonymous_id = _identifier(row.get("anonymous_id"))
    if user_id is None and anonymous_id is None:
        return None
    email = row.get("email")
    url = row.get("url")
    return SnapshotRow(
        user_id=user_id,
        anonymous_id=anonymous_id,
        email=str(email).strip() or None if email is not None else None,
        url=str(url) if url else None,
        traits={k: v for k, v in row.items() if k not in KNOWN_COLUMNS},
    )


def _identifier(value: Any) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    text_value = str(value).strip()
    return text_value or None


def _one_line(exc: SQLAlchemyError) -> str:
    """The database's own message, without SQLAlchemy's multi-line decoration."""
    message = str(getattr(exc, "orig", None) or exc)
    return " ".join(message.split())[:300]
