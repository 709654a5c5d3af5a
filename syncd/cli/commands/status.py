"""`syncd status`: per audience and destination, what the ledger says now."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine

from syncd.config import Config
from syncd.model import PairOutcome
from syncd.render import duration, maybe_iso, table
from syncd.state.readings import PairReading, read


def status(config: Config, engine: Engine) -> list[dict[str, Any]]:
    """`syncd status --json`'s rows: the reading of every configured pair."""
    return [_row(pair) for pair in read(config, engine).pairs]


def _row(pair: PairReading) -> dict[str, Any]:
    return {
        "audience": pair.audience,
        "destination": pair.destination,
        "members": pair.members,
        "acknowledged": pair.acknowledged,
        "pending": pair.pending,
        "failed": pair.failed,
        "skipped": pair.skipped,
        "oldest_pending_at": maybe_iso(pair.oldest_pending_at),
        "oldest_pending_age_seconds": pair.oldest_pending_age_seconds,
        "last_run_id": pair.last_run_id,
        "last_run_at": maybe_iso(pair.last_run_finished_at or pair.last_run_started_at),
        "last_outcome": pair.last_outcome,
        "last_message": pair.last_message,
    }


def _age(seconds: int) -> str:
    """3d4h, 2h5m, 4m10s: the two largest units, enough to judge a backlog."""
    return duration(seconds, most=2)


# (column, row field, how to show it): the backlog shows as its age, the JSON has both.
_COLUMNS: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
    ("audience", "audience", str), ("destination", "destination", str), ("members", "members", str),
    ("acknowledged", "acknowledged", str), ("pending", "pending", str),
    ("oldest_pending", "oldest_pending_age_seconds", _age), ("failed", "failed", str),
    ("last_run", "last_run_at", str), ("last_outcome", "last_outcome", str),
)


def format_status(rows: list[dict[str, Any]]) -> str:
    cells = [[c[0] for c in _COLUMNS]] + [
        ["-" if row[field] is None else show(row[field]) for _, field, show in _COLUMNS] for row in rows
    ]
    notes = [f"  {r['audience']} -> {r['destination']}: {r['last_message']}"
             for r in rows if r["last_message"] and r["last_outcome"] != PairOutcome.OK]
    return "\n".join([table(cells), *notes])
