"""The one read model: what the state database says now about every configured (audience,
destination) pair, and the recent runs, read once (`read`). `syncd status`, the status
page, the daemon's metrics and the alerts all show this one reading; after a daemon run it is
read once and shared by the alerts and the metrics. Values stay typed (datetimes, ints):
formatting is the reader's. The backlog and its age rule are state/backlog.py's."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy import Engine

from syncd.config import Config
from syncd.model import PairOutcome
from syncd.state.backlog import backlog
from syncd.state.diff import PlanCounts
from syncd.state.engine import now
from syncd.state.operator import RunSummary, recent_runs
from syncd.state.runs import PairResult, acked_true_count, last_results, last_successes

RECENT_RUNS = 20  # runs a reading keeps (the page's chart and table)


@dataclass(frozen=True)
class PairReading:
    """One configured (audience, destination) pair, as the state database has it now."""

    audience: str
    destination: str
    members: int  # in the latest snapshot
    acknowledged: int  # users the destination holds as `true`
    pending: int  # changes a run would send now (entries and exits)
    failed: int  # of those, refused last time
    skipped: int  # members the destination cannot get (no email at Nat)
    oldest_pending_at: datetime | None = None  # since when the pair has had work (None: none)
    oldest_pending_age_seconds: int | None = None  # its age when read
    # The pair's latest run (None: never run).
    last_run_id: int | None = None
    last_run_started_at: datetime | None = None
    last_run_finished_at: datetime | None = None
    last_outcome: str | None = None  # a PairOutcome's value
    last_message: str | None = None  # why it was not `ok`
    held_exits: int = 0  # exits the guard held in that run


@dataclass(frozen=True)
class Reading:
    at: datetime  # when it was read
    pairs: list[PairReading]  # in the config's order
    runs: list[RunSummary]  # the last RECENT_RUNS runs, newest first
    # When each pair the ledger knows (configured or not) last delivered everything.
    last_successes: Mapping[tuple[str, str], datetime]


def read(config: Config, engine: Engine) -> Reading:
    """The state of every configured pair and the recent runs, in one transaction."""
    at = now()
    with engine.begin() as conn:
        last = {(r.audience_key, r.destination): r for r in last_results(conn)}
        pairs = [_pair(key, name, counts, last.get((key, name)), acked_true_count(conn, key, name), at)
                 for key, name, counts in backlog(config, conn)]
        return Reading(at, pairs, recent_runs(conn, RECENT_RUNS), last_successes(conn))


def _pair(key: str, name: str, counts: PlanCounts, last: PairResult | None, acknowledged: int,
          at: datetime) -> PairReading:
    since = counts.oldest_pending
    pair = PairReading(
        key, name, counts.members, acknowledged, counts.entered + counts.left, counts.failed, counts.skipped,
        oldest_pending_at=since,
        oldest_pending_age_seconds=max(0, round((at - since).total_seconds())) if since else None,
    )
    if last is None:
        return pair
    held = int(last.left or 0) if last.outcome == PairOutcome.HELD else 0
    return replace(pair, last_run_id=last.run_id, last_run_started_at=last.started_at,
                   last_run_finished_at=last.finished_at, last_outcome=last.outcome,
                   last_message=last.message, held_exits=held)
