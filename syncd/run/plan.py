"""`syncd plan`: the run it previews, dry. A fresh snapshot of each audience goes into a
scratch table, each pair gets the same work list and guard verdict a run would make, and
what a run would send comes back as a typed Plan: per pair its changes, per destination the
calls they take (its class's estimate: grouped calls, mass updates, id listing) and their
time at its rate limit. Nothing is sent and nothing in the state database changes. No lease
is needed: a run going on at the same time is neither blocked nor disturbed."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import partial

from sqlalchemy import Connection, Engine, Table
from sqlalchemy.exc import SQLAlchemyError

from syncd import guards
from syncd.config import AudienceConfig, Config
from syncd.config.registry import DestinationType
from syncd.errors import Stopped
from syncd.estimate import CallEstimate
from syncd.guards import GuardVerdict
from syncd.model import Change
from syncd.run.pipeline import off_main_thread
from syncd.source import QueryStopped, take_snapshot
from syncd.state.engine import cancelled_on, now
from syncd.state.snapshots import SnapshotCounts, load_scratch, scratch
from syncd.state.work import WorkList, create_work, drop_work
from syncd.state.workload import count_work

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
    calls: int = 0  # the calls its sends take, as if the destination had no other audience

    @property
    def send_seconds(self) -> float | None:
        """The calls' time at the rate limit (None: unpaced)."""
        return round(self.calls / self.rate_limit, 1) if self.rate_limit else None


@dataclass(frozen=True)
class DestinationPlan:
    """The calls a destination's sends take in a run, all its audiences together (a user's
    changes of several audiences share calls), and their time at its rate limit."""

    destination: str
    estimate: CallEstimate
    rate_limit: float | None
    send_limit: float  # seconds a run sends for ([schedule] max_send_time)

    @property
    def send_seconds(self) -> float | None:
        return self.estimate.seconds(self.rate_limit)

    @property
    def runs(self) -> int:
        """Runs the sending spans: each sends for at most max_send_time (1 when unpaced)."""
        seconds = self.send_seconds or 0.0
        return max(1, math.ceil(seconds / self.send_limit))


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
    destinations: list[DestinationPlan] = field(default_factory=list)


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
            audiences = [_snapshot(config, conn, members, a, snapshot_at, stop) for a in config.audiences]
            ready = [a for a, item in zip(config.audiences, audiences, strict=True) if item.error is None]
            pairs: dict[tuple[str, str], PairPlan] = {}
            destinations = [_destination(config, conn, members, name, ready, pairs)
                            for name in config.destinations if any(name in a.destinations for a in ready)]
    except (QueryStopped, SQLAlchemyError):
        if stop is None or not stop.is_set():
            raise
        raise Stopped("plan stopped by the stop request: its queries were cancelled; nothing was sent "
                      "or recorded") from None
    audiences = [replace(item, destinations=[pairs[(a.key, name)] for name in a.destinations])
                 if item.error is None else item for a, item in zip(config.audiences, audiences, strict=True)]
    return Plan(snapshot_at, audiences, destinations)


def _snapshot(config: Config, conn: Connection, members: Table, audience: AudienceConfig,
              snapshot_at: datetime, stop: threading.Event | None) -> AudiencePlan:
    if stop is not None and stop.is_set():
        raise QueryStopped
    counts = SnapshotCounts()
    # The run's snapshot step, loading the scratch table instead of `member`.
    error = take_snapshot(config, audience, snapshot_at, counts,
                          partial(load_scratch, conn, members, audience.key, counts=counts), stop=stop)
    return AudiencePlan(audience.key, error, counts)


def _destination(config: Config, conn: Connection, members: Table, name: str, audiences: list[AudienceConfig],
                 pairs: dict[tuple[str, str], PairPlan]) -> DestinationPlan:
    """The destination's pairs, their lists in one work table as a run makes them, and the
    calls they take together."""
    dest = config.destinations[name]
    destination = dest.kind(dest)
    create_work(conn)
    try:
        for audience in (a for a in audiences if name in a.destinations):
            pairs[(audience.key, name)] = _pair(config, conn, members, audience, name, destination)
        held = [key for (key, n), pair in pairs.items() if n == name and pair.guard.held]
        estimate = destination.estimate(count_work(conn, name, members, held))
    finally:
        drop_work(conn)
    return DestinationPlan(name, estimate, dest.rate_limit, config.schedule.send_limit.total_seconds())


def _pair(config: Config, conn: Connection, members: Table, audience: AudienceConfig, name: str,
          destination: DestinationType) -> PairPlan:
    # The same work list a run makes, from the scratch snapshot instead of `member`.
    work = WorkList(conn, audience.key, name, config.destinations[name].needs_email, members)
    counts = work.make(fresh=False)
    guard = guards.check(conn, audience, config.guards, name, counts.members, counts.left)
    samples = {label: [_who(c) for c in work.page(value, "", SAMPLES)]
               for label, value in (("entered", True), ("left", False))}
    held = [audience.key] if guard.held else []
    alone = destination.estimate(count_work(conn, name, members, held, audiences=[audience.key]))
    return PairPlan(
        name, counts.entered, counts.left, counts.retries, counts.skipped, samples,
        sends=counts.entered + (0 if guard.held else counts.leaves),
        rate_limit=config.destinations[name].rate_limit, guard=guard,
        guard_message=guard.hold_message(config.path) if guard.held else None, calls=alone.calls,
    )


def _who(change: Change) -> str:
    return str(change.user_id or change.anonymous_id)
