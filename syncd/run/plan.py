"""`syncd plan`: the run it previews, dry. A fresh snapshot of each audience goes into a
scratch table, each pair gets the same work list and guard verdict a run would make, and
what a run would send comes back as a typed Plan; nothing is sent and nothing in the state
database changes. No lease is needed: a run going on at the same time is neither blocked
nor disturbed."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial

from sqlalchemy import Connection, Engine, Table
from sqlalchemy.exc import SQLAlchemyError

from syncd import guards
from syncd.config import AudienceConfig, Config
from syncd.errors import Stopped
from syncd.guards import GuardVerdict
from syncd.model import Change
from syncd.run.pipeline import off_main_thread
from syncd.source import QueryStopped, take_snapshot
from syncd.state.diff import WorkList
from syncd.state.engine import cancelled_on, now
from syncd.state.snapshots import SnapshotCounts, load_scratch, scratch

SAMPLES = 5  # users shown per kind of change


@dataclass(frozen=True)
class PairPlan:
    """What a run would do for one (audience, destination) pair now."""

    destination: str
    entered: int
    left: int
    retries: int  # of those, tried before and not acknowledged
    skipped: int  # members the destination cannot get (no email at Nat)
    samples: dict[str, list[str]]  # "entered" / "left": the first SAMPLES users' ids
    sends: int  # entries, and the exits unless the guard holds them
    rate_limit: float | None
    guard: GuardVerdict
    guard_message: str | None  # what the run would log when the guard holds the exits

    @property
    def send_seconds(self) -> float | None:
        """The sends' time at the rate limit (None: unpaced)."""
        return round(self.sends / self.rate_limit, 1) if self.rate_limit else None


@dataclass(frozen=True)
class AudiencePlan:
    audience: str
    error: str | None = None  # the query failed: nothing else is known
    counts: SnapshotCounts = field(default_factory=SnapshotCounts)
    destinations: list[PairPlan] = field(default_factory=list)


@dataclass(frozen=True)
class Plan:
    snapshot_at: datetime
    audiences: list[AudiencePlan]


def plan(config: Config, engine: Engine, stop: threading.Event | None = None) -> Plan:
    """A dry run: a fresh snapshot into a temporary table, compared with the ledger. Once
    `stop` is set (SIGTERM/SIGINT), the running queries are cancelled, as a run's are (the
    source query, and the scratch table's work on the state database): Stopped. It runs in a
    worker thread, so the signal's handler is not held back by a query in the main thread."""
    return off_main_thread(partial(_plan, config, engine, stop))


def _plan(config: Config, engine: Engine, stop: threading.Event | None) -> Plan:
    snapshot_at = now()
    try:
        with cancelled_on(stop, engine), scratch(engine) as (conn, members):
            return Plan(snapshot_at, [_audience(config, conn, members, a, snapshot_at, stop)
                                      for a in config.audiences])
    except (QueryStopped, SQLAlchemyError):
        if stop is None or not stop.is_set():
            raise
    raise Stopped("plan stopped by the stop request: its queries were cancelled; nothing was sent "
                  "or recorded")


def _audience(config: Config, conn: Connection, members: Table, audience: AudienceConfig,
              snapshot_at: datetime, stop: threading.Event | None) -> AudiencePlan:
    if stop is not None and stop.is_set():
        raise QueryStopped
    counts = SnapshotCounts()
    # The run's snapshot step, loading the scratch table instead of `member`.
    error = take_snapshot(config, audience, snapshot_at, counts,
                          partial(load_scratch, conn, members, audience.key, counts=counts), stop=stop)
    if error is not None:
        return AudiencePlan(audience.key, error)
    return AudiencePlan(audience.key, None, counts,
                        [_pair(config, conn, members, audience, name) for name in audience.destinations])


def _pair(config: Config, conn: Connection, members: Table, audience: AudienceConfig, name: str) -> PairPlan:
    needs_email = config.destinations[name].needs_email
    # The same work list a run makes, from the scratch snapshot instead of `member`.
    with WorkList(conn, audience.key, name, needs_email, members) as work:
        counts = work.counts
        guard = guards.check(conn, audience, config.guards, name, counts.members, counts.left)
        samples = {label: [_who(c) for c in work.page(value, "", SAMPLES)]
                   for label, value in (("entered", True), ("left", False))}
    return PairPlan(
        name, counts.entered, counts.left, counts.retries, counts.skipped, samples,
        sends=counts.entered + (0 if guard.held else counts.leaves),
        rate_limit=config.destinations[name].rate_limit, guard=guard,
        guard_message=guard.hold_message(config.path) if guard.held else None,
    )


def _who(change: Change) -> str:
    return str(change.user_id or change.anonymous_id)
