"""The backlog: per configured (audience, destination), what a run would send now and since
when the pair has had undelivered work. The reading (state/readings.py) reads it for `status`,
the status page, the metrics and the alerts."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime

from sqlalchemy import Connection

from syncd.config import Config
from syncd.state.diff import PlanCounts, plan_counts
from syncd.state.runs import last_snapshots
from syncd.state.runs import not_ok_since as runs_not_ok_since


def backlog(config: Config, conn: Connection, at: datetime) -> Iterator[tuple[str, str, PlanCounts]]:
    """Per configured (audience, destination): what a run would do now, and in
    `oldest_pending` since when the pair has had undelivered work (None: no work).
    `status`, `status --json` and the metrics all read this: the age is defined here only."""
    not_ok_since = runs_not_ok_since(conn)
    snapshots = last_snapshots(conn)
    for audience in config.audiences:
        for name in audience.destinations:
            needs_email = config.destinations[name].needs_email
            counts = plan_counts(conn, audience.key, name, needs_email)
            since = pending_since(counts, not_ok_since.get((audience.key, name)),
                                  snapshots.get(audience.key, at))
            yield audience.key, name, replace(counts, oldest_pending=since)


def pending_since(counts: PlanCounts, not_ok_since: datetime | None,
                  snapshot_at: datetime) -> datetime | None:
    """The backlog's age rule: with work to send, the earlier of the oldest tried change's
    `pending_since` and the start of the pair's current streak of runs that did not end `ok`.
    The streak covers what was never tried: a destination set aside or refusing the key
    before a change's turn, a User.com attribute of the wrong type, exits the guard holds.
    Work no run has tried or judged yet (a destination just added to an audience, resync's
    marks, a newer syncd's first look at an older ledger) dates from the latest snapshot that
    shows it (`snapshot_at`): never a pending count without an age."""
    if not counts.changes:
        return None
    known = [t for t in (counts.oldest_pending, not_ok_since) if t is not None]
    return min(known, default=snapshot_at)
