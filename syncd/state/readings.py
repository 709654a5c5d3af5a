"""The one read model: what the state database says now about every configured (audience,
destination) pair, the recent runs, the run in progress and the next scheduled run, read once
(`read`). `syncd status`, the status page, the daemon's metrics and the alerts all show this
one reading; after a daemon run it is read once and shared by the alerts and the metrics.
Values stay typed (datetimes, ints): formatting is the reader's. The backlog and its age
rule are state/backlog.py's."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

from sqlalchemy import Connection, Engine

from syncd.config import Config, DestinationConfig
from syncd.model import PairOutcome
from syncd.state.backlog import backlog
from syncd.state.daemons import DaemonRecord, alive
from syncd.state.diff import PlanCounts
from syncd.state.engine import now
from syncd.state.operator import RunSummary, recent_runs
from syncd.state.runs import (
    InProgress,
    PairResult,
    acked_true_count,
    in_progress,
    last_results,
    last_successes,
)
from syncd.state.workload import count_pair

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
    running_acknowledged: int | None = None  # by the run in progress so far (None: no run going on)
    # The backlog's sending time at the destination's rate limit, counted in calls (its
    # class's estimate: mass updates, id listing, one call per user), not changes; None:
    # nothing pending, or unpaced. A backlog longer than max_send_time spans several runs.
    eta_seconds: int | None = None

    @property
    def last_run_duration_seconds(self) -> int | None:
        if self.last_run_started_at is None or self.last_run_finished_at is None:
            return None
        return max(0, round((self.last_run_finished_at - self.last_run_started_at).total_seconds()))

    @property
    def next_step(self) -> str | None:
        """What to do about a pair whose latest run did not end `ok`: the same words in
        `status` and on the page. None where there is nothing to do, or where the reason says
        it already (held: the `syncd approve` command is in the guard's message)."""
        if self.last_outcome == PairOutcome.STOPPED:
            return (f"check the key named in [destinations.{self.destination}] (api_key_env / "
                    "api_key_file); every run tries again")
        if self.last_outcome == PairOutcome.SOURCE_FAILED:
            return "fix the query or its source database; the other audiences go on"
        if self.last_outcome == PairOutcome.UNDELIVERED and self.failed:
            return "`syncd failures` shows the rejected changes and why; fix the cause, then `syncd retry`"
        if self.last_outcome == PairOutcome.UNDELIVERED:
            return "nothing to do unless it persists: every run sends what is left"
        return None


@dataclass(frozen=True)
class Running:
    """The run in progress, from whichever process runs it."""

    run_id: int
    started_at: datetime
    host: str
    pid: int
    snapshots: int  # audiences whose snapshot it has taken
    audiences: int  # the audiences configured
    age_seconds: int  # since it started, when read


@dataclass(frozen=True)
class Reading:
    at: datetime  # when it was read
    pairs: list[PairReading]  # in the config's order
    runs: list[RunSummary]  # the last RECENT_RUNS runs, newest first
    # When each pair the ledger knows (configured or not) last delivered everything.
    last_successes: Mapping[tuple[str, str], datetime]
    running: Running | None = None
    daemons: list[DaemonRecord] = field(default_factory=list)  # `syncd run`s alive, soonest run first

    @property
    def next_run(self) -> DaemonRecord | None:
        """The daemon that starts the next scheduled run (None: no daemon schedules one)."""
        return next((d for d in self.daemons if d.next_run_at is not None), None)


def read(config: Config, engine: Engine) -> Reading:
    """The state of every configured pair, the recent runs, the run in progress and the
    daemons' next runs, in one transaction."""
    at = now()
    with engine.begin() as conn:
        last = {(r.audience_key, r.destination): r for r in last_results(conn)}
        going = in_progress(conn, at)
        pairs = [_pair(key, name, counts, last.get((key, name)), acked_true_count(conn, key, name), at, going,
                       _eta(conn, config.destinations[name], key, counts))
                 for key, name, counts in backlog(config, conn, at)]
        return Reading(at, pairs, recent_runs(conn, RECENT_RUNS), last_successes(conn),
                       _running(going, len(config.audiences), at), alive(conn, at))


def _running(going: InProgress | None, audiences: int, at: datetime) -> Running | None:
    if going is None:
        return None
    run = going.run
    return Running(run.id, run.started_at, run.host, run.pid, going.snapshots, audiences,
                   max(0, round((at - run.started_at).total_seconds())))


def _eta(conn: Connection, dest: DestinationConfig, key: str, counts: PlanCounts) -> int | None:
    """The pair's backlog in calls (as if its destination had no other work) at the rate limit."""
    if not counts.entered + counts.left or not dest.rate_limit:
        return None
    calls = dest.kind(dest).estimate(count_pair(conn, key, dest.name, dest.needs_email)).calls
    return math.ceil(calls / dest.rate_limit)


def _pair(key: str, name: str, counts: PlanCounts, last: PairResult | None, acknowledged: int,
          at: datetime, going: InProgress | None, eta: int | None) -> PairReading:
    since = counts.oldest_pending
    pair = PairReading(
        key, name, counts.members, acknowledged, counts.changes, counts.failed, counts.skipped,
        oldest_pending_at=since,
        oldest_pending_age_seconds=max(0, round((at - since).total_seconds())) if since else None,
        running_acknowledged=going.acknowledged.get((key, name), 0) if going is not None else None,
        eta_seconds=eta,
    )
    if last is None:
        return pair
    held = int(last.left or 0) if last.outcome == PairOutcome.HELD else 0
    return replace(pair, last_run_id=last.run_id, last_run_started_at=last.started_at,
                   last_run_finished_at=last.finished_at, last_outcome=last.outcome,
                   last_message=last.message, held_exits=held)
