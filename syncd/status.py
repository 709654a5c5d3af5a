"""`syncd status`: per audience and destination, what the ledger says now."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine

from syncd import ledger
from syncd.config import Config
from syncd.destinations import make_destination


def backlog(config: Config, conn: Connection) -> Iterator[tuple[str, str, ledger.PlanCounts]]:
    """Per configured (audience, destination): what a run would do now, and since when the
    oldest change still to send has waited. `status` and the metrics both read this."""
    for audience in config.audiences:
        for name in audience.destinations:
            needs_email = make_destination(config.destinations[name]).needs_email
            yield audience.key, name, ledger.plan_counts(conn, audience.key, name, needs_email)


def status(config: Config, engine: Engine) -> list[dict[str, Any]]:
    rows = []
    with engine.connect() as conn:
        last = {(r.audience_key, r.destination): r for r in ledger.last_results(conn)}
        for key, name, counts in backlog(config, conn):
            result = last.get((key, name))
            rows.append({
                "audience": key,
                "destination": name,
                "members": counts.members,
                "acknowledged": ledger.acked_true_count(conn, key, name),
                "pending": counts.entered + counts.left,
                "failed": counts.failed,
                "skipped_no_email": counts.skipped,
                "oldest_pending": _iso(counts.oldest_pending),
                "last_run": _iso(result.finished_at or result.started_at) if result else None,
                "last_outcome": result.outcome if result else None,
                "last_message": result.message if result else None,
            })
    return rows


def format_status(rows: list[dict[str, Any]]) -> str:
    headers = ["audience", "destination", "members", "acknowledged", "pending", "oldest_pending",
               "failed", "last_run", "last_outcome"]
    table = [headers] + [[_cell(row[h]) for h in headers] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
             for line in table]
    notes = [f"  {r['audience']} -> {r['destination']}: {r['last_message']}"
             for r in rows if r["last_message"] and r["last_outcome"] != "ok"]
    return "\n".join(lines + notes)


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def _iso(moment: datetime | None) -> str | None:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment else None
