"""`syncd status`: per audience and destination, what the ledger says now; the run in progress
and the next scheduled run (state/readings.py: the same reading the page shows)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine

from syncd.config import Config
from syncd.model import PairOutcome
from syncd.render import duration, maybe_iso, plural, table
from syncd.state.readings import PairReading, Reading, read


def status(config: Config, engine: Engine) -> list[dict[str, Any]]:
    """`syncd status --json`'s rows: the reading of every configured pair. Each also carries
    the run in progress (its `acknowledged`: that pair's so far) and the next scheduled run."""
    reading = read(config, engine)
    return [_row(pair, reading) for pair in reading.pairs]


def _row(pair: PairReading, reading: Reading) -> dict[str, Any]:
    running, upcoming = reading.running, reading.next_run
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
        "eta_seconds": pair.eta_seconds,  # the backlog's calls at the rate limit
        "last_run_id": pair.last_run_id,
        "last_run_at": maybe_iso(pair.last_run_started_at),  # its start, as `history` shows it
        "last_run_duration_seconds": pair.last_run_duration_seconds,
        "last_outcome": pair.last_outcome,
        "last_message": pair.last_message,
        "next_step": pair.next_step,
        "run_in_progress": None if running is None else {
            "run_id": running.run_id, "started_at": maybe_iso(running.started_at),
            "age_seconds": running.age_seconds, "host": running.host, "pid": running.pid,
            "snapshots_taken": running.snapshots, "audiences": running.audiences,
            "acknowledged": pair.running_acknowledged,
        },
        "next_run_at": maybe_iso(upcoming.next_run_at) if upcoming else None,
        "next_run_by": {"host": upcoming.host, "pid": upcoming.pid} if upcoming else None,
    }


def _age(seconds: int) -> str:
    """3d4h, 2h5m, 4m10s: the two largest units, enough to judge a backlog."""
    return duration(seconds, most=2)


# (column, row field, how to show it): the backlog shows as its age and its sending time
# (counted in calls at the rate limit), the JSON has both.
_COLUMNS: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
    ("audience", "audience", str), ("destination", "destination", str), ("members", "members", str),
    ("acknowledged", "acknowledged", str), ("pending", "pending", str),
    ("oldest_pending", "oldest_pending_age_seconds", _age), ("eta", "eta_seconds", _age),
    ("skipped", "skipped", str), ("failed", "failed", str), ("last_run", "last_run_at", str),
    ("duration", "last_run_duration_seconds", _age), ("last_outcome", "last_outcome", str),
)


def format_status(rows: list[dict[str, Any]]) -> str:
    cells = [[c[0] for c in _COLUMNS]] + [
        ["-" if row[field] is None else show(row[field]) for _, field, show in _COLUMNS] for row in rows
    ]
    return "\n".join([table(cells), *_notes(rows), *_running(rows), _next_run(rows)])


def _notes(rows: list[dict[str, Any]]) -> list[str]:
    """Why each pair's last run was not `ok`, and what to do."""
    return [f"  {r['audience']} -> {r['destination']} ({r['last_outcome']}): {r['last_message']}"
            + (f". Next: {r['next_step']}" if r["next_step"] else "")
            for r in rows if r["last_message"] and r["last_outcome"] != PairOutcome.OK]


def _running(rows: list[dict[str, Any]]) -> list[str]:
    running = rows[0]["run_in_progress"] if rows else None
    if running is None:
        return []
    head = (f"run {running['run_id']} in progress since {running['started_at']} "
            f"({_age(running['age_seconds'])}; pid {running['pid']} on {running['host']}): "
            f"{running['snapshots_taken']} of {plural(running['audiences'], 'snapshot')} taken")
    return [head] + [f"  {r['audience']} -> {r['destination']}: {r['run_in_progress']['acknowledged']} "
                     f"acknowledged so far, {r['pending']} pending" for r in rows]


def _next_run(rows: list[dict[str, Any]]) -> str:
    at, by = (rows[0]["next_run_at"], rows[0]["next_run_by"]) if rows else (None, None)
    if at is None or by is None:
        return "next run: none scheduled (no `syncd run` is running on this state database)"
    return f"next run: {at} (`syncd run`, pid {by['pid']} on {by['host']})"
