"""`syncd status`: per audience and destination, what the ledger says now."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine

from syncd.config import Config
from syncd.model import PairOutcome
from syncd.render import duration, maybe_iso, table
from syncd.state.backlog import backlog
from syncd.state.engine import now
from syncd.state.runs import acked_true_count, last_results


def status(config: Config, engine: Engine) -> list[dict[str, Any]]:
    rows = []
    at = now()
    with engine.connect() as conn:
        last = {(r.audience_key, r.destination): r for r in last_results(conn)}
        for key, name, counts in backlog(config, conn):
            result = last.get((key, name))
            since = counts.oldest_pending
            rows.append({
                "audience": key,
                "destination": name,
                "members": counts.members,
                "acknowledged": acked_true_count(conn, key, name),
                "pending": counts.entered + counts.left,
                "failed": counts.failed,
                "skipped": counts.skipped,
                "oldest_pending_at": maybe_iso(since),
                "oldest_pending_age_seconds": max(0, round((at - since).total_seconds())) if since else None,
                "last_run_id": result.run_id if result else None,
                "last_run_at": maybe_iso(result.finished_at or result.started_at) if result else None,
                "last_outcome": result.outcome if result else None,
                "last_message": result.message if result else None,
            })
    return rows


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
