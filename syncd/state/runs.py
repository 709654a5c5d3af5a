"""Run records (run, run_audience, run_result), retention, and the reads of them."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    and_,
    delete,
    exists,
    false,
    func,
    insert,
    select,
    true,
    update,
)

from syncd.model import PairOutcome, RunOutcome, Totals
from syncd.state.engine import now
from syncd.state.lease import RUN_LEASE
from syncd.state.snapshots import SnapshotCounts
from syncd.state.tables import (
    LEASE,
    RUN,
    RUN_AUDIENCE,
    RUN_RESULT,
    L,
    M,
)


def start_run(engine: Engine, snapshot_at: datetime) -> int:
    with engine.begin() as conn:
        result = conn.execute(
            insert(RUN).values(started_at=now(), snapshot_at=snapshot_at, outcome=RunOutcome.RUNNING.value,
                               host=socket.gethostname(), pid=os.getpid())
        )
        run_id = result.inserted_primary_key[0] if result.inserted_primary_key else None
    assert isinstance(run_id, int)
    return run_id


def record_audience(engine: Engine, run_id: int, audience_key: str, counts: SnapshotCounts,
                    error: str | None) -> None:
    with engine.begin() as conn:
        conn.execute(insert(RUN_AUDIENCE).values(
            run_id=run_id, audience_key=audience_key, error=error, **asdict(counts)
        ))


def record_result(engine: Engine, run_id: int, result: dict[str, Any]) -> None:
    with engine.begin() as conn:
        # Outcomes are StrEnums: store their plain values, whatever the driver makes of a subclass.
        values = {k: str(v) if isinstance(v, StrEnum) else v for k, v in result.items()}
        conn.execute(insert(RUN_RESULT).values(run_id=run_id, **values))


def finish_run(engine: Engine, run_id: int, outcome: str) -> None:
    with engine.begin() as conn:
        conn.execute(update(RUN).where(RUN.c.id == run_id).values(finished_at=now(), outcome=str(outcome)))
        # Runs that never finished (killed) are not "running" forever.
        conn.execute(
            update(RUN).where(RUN.c.outcome == RunOutcome.RUNNING.value, RUN.c.id < run_id)
            .values(outcome=RunOutcome.CRASHED.value)
        )


def not_ok_since(conn: Connection) -> dict[tuple[str, str], datetime]:
    """Per (audience, destination) pair whose latest result is not `ok`: when the first run of
    that unbroken streak of not-`ok` results started (runs without the pair do not break it).
    Retention keeps that first run and the last `ok` one before it (_latest_runs)."""
    last_ok = _last_ok().subquery()
    query = (
        select(RUN_RESULT.c.audience_key, RUN_RESULT.c.destination, func.min(RUN.c.started_at))
        .join(RUN, RUN.c.id == RUN_RESULT.c.run_id)
        .outerjoin(last_ok, and_(last_ok.c.audience_key == RUN_RESULT.c.audience_key,
                                 last_ok.c.destination == RUN_RESULT.c.destination))
        .where(RUN_RESULT.c.run_id > func.coalesce(last_ok.c.run_id, 0))
        .group_by(RUN_RESULT.c.audience_key, RUN_RESULT.c.destination)
    )
    return {(r[0], r[1]): r[2] for r in conn.execute(query) if isinstance(r[2], datetime)}


# --- retention -------------------------------------------------------------------------


@dataclass
class Pruned:
    runs: int = 0
    run_audiences: int = 0
    run_results: int = 0
    ledger_rows: int = 0

    @property
    def total(self) -> int:
        return self.runs + self.run_audiences + self.run_results + self.ledger_rows


def prune(engine: Engine, before: datetime) -> Pruned:
    """Delete what no longer informs anything: runs started before `before` (but never the
    latest run of an audience or of a pair, which `syncd status` shows), and ledger rows
    settled at `false` since before `before` for users who are not members."""
    pruned = Pruned()
    with engine.begin() as conn:
        keep = _latest_runs(conn)
        old = select(RUN.c.id).where(RUN.c.started_at < before, RUN.c.id.not_in(keep))
        pruned.run_results = conn.execute(delete(RUN_RESULT).where(RUN_RESULT.c.run_id.in_(old))).rowcount
        pruned.run_audiences = conn.execute(
            delete(RUN_AUDIENCE).where(RUN_AUDIENCE.c.run_id.in_(old))).rowcount
        pruned.runs = conn.execute(
            delete(RUN).where(RUN.c.started_at < before, RUN.c.id.not_in(keep))).rowcount
        pruned.ledger_rows = conn.execute(delete(L).where(_settled_false(before))).rowcount
    return pruned


def _latest_runs(conn: Connection) -> list[int]:
    """The runs retention keeps, however old: the latest run overall, of every audience and of
    every (audience, destination) pair; and per pair its latest `ok` run and the first run of
    the streak of not-`ok` runs since (not_ok_since dates a backlog from it, also when the
    streak has lasted longer than the retention)."""
    pair = (RUN_RESULT.c.audience_key, RUN_RESULT.c.destination)
    last_ok = _last_ok().subquery()
    streak_start = (
        select(func.min(RUN_RESULT.c.run_id))
        .outerjoin(last_ok, and_(last_ok.c.audience_key == RUN_RESULT.c.audience_key,
                                 last_ok.c.destination == RUN_RESULT.c.destination))
        .where(RUN_RESULT.c.run_id > func.coalesce(last_ok.c.run_id, 0))
        .group_by(*pair)
    )
    queries = [
        select(func.max(RUN.c.id)),
        select(func.max(RUN_AUDIENCE.c.run_id)).group_by(RUN_AUDIENCE.c.audience_key),
        select(func.max(RUN_RESULT.c.run_id)).group_by(*pair),
        select(last_ok.c.run_id),
        streak_start,
    ]
    return sorted({run_id for query in queries for run_id in conn.scalars(query) if run_id is not None})


def _last_ok() -> Any:
    """Per pair, its latest run that ended `ok` for it."""
    return (select(RUN_RESULT.c.audience_key, RUN_RESULT.c.destination,
                   func.max(RUN_RESULT.c.run_id).label("run_id"))
            .where(RUN_RESULT.c.outcome == PairOutcome.OK.value)
            .group_by(RUN_RESULT.c.audience_key, RUN_RESULT.c.destination))


def _settled_false(before: datetime) -> ColumnElement[bool]:
    """A ledger row that says no more than "never sent": the destination holds `false`
    (acknowledged), nothing is pending, in flight, uncertain or failed, and the user is not
    a member. For the diff such a row and no row are the same: a member with either needs
    `true` (_enter_condition: acked false / acked NULL), a non-member with either needs
    nothing (_leave_condition needs acked true or maybe_true). Only rows acknowledged
    before `before` go. The user's next `true` starts again at seq 0, in a new row with a
    new nonce, so its messageId differs from every earlier one."""
    return and_(
        L.c.acked == false(), L.c.acked_at < before, L.c.pending.is_(None), L.c.in_flight.is_(None),
        L.c.maybe_true == false(), L.c.maybe_false == false(), L.c.failed == false(),
        ~exists().where(M.c.audience_key == L.c.audience_key, M.c.subject == L.c.subject),
    )


@dataclass(frozen=True)
class RunRecord:
    """A row of `run`."""

    id: int
    started_at: datetime
    snapshot_at: datetime
    finished_at: datetime | None
    outcome: str  # a RunOutcome's value
    host: str
    pid: int


@dataclass(frozen=True)
class PairResult(Totals):
    """A row of `run_result`, with its run's times."""

    run_id: int
    audience_key: str
    destination: str
    members: int
    outcome: str  # a PairOutcome's value
    message: str | None
    started_at: datetime
    finished_at: datetime | None


def last_run(engine: Engine) -> RunRecord | None:
    """The latest run, finished or not."""
    with engine.begin() as conn:
        row = conn.execute(select(RUN).order_by(RUN.c.id.desc()).limit(1)).first()
    return RunRecord(**row._mapping) if row is not None else None


def last_results(conn: Connection) -> Iterator[PairResult]:
    """The latest run_result row of every (audience, destination) pair, with its run."""
    latest = (
        select(RUN_RESULT.c.audience_key, RUN_RESULT.c.destination,
               func.max(RUN_RESULT.c.run_id).label("run_id"))
        .group_by(RUN_RESULT.c.audience_key, RUN_RESULT.c.destination)
        .subquery()
    )
    query = (
        select(RUN_RESULT, RUN.c.started_at, RUN.c.finished_at)
        .join(latest, and_(RUN_RESULT.c.run_id == latest.c.run_id,
                           RUN_RESULT.c.audience_key == latest.c.audience_key,
                           RUN_RESULT.c.destination == latest.c.destination))
        .join(RUN, RUN.c.id == RUN_RESULT.c.run_id)
    )
    for row in conn.execute(query):
        yield PairResult(**row._mapping)


def last_snapshots(conn: Connection) -> dict[str, datetime]:
    """Per audience, when the run that took its latest snapshot started."""
    query = (
        select(RUN_AUDIENCE.c.audience_key, func.max(RUN.c.started_at))
        .join(RUN, RUN.c.id == RUN_AUDIENCE.c.run_id)
        .where(RUN_AUDIENCE.c.error.is_(None))
        .group_by(RUN_AUDIENCE.c.audience_key)
    )
    return {r[0]: r[1] for r in conn.execute(query) if isinstance(r[1], datetime)}


@dataclass(frozen=True)
class InProgress:
    """The run going on now (any process), and how far it got."""

    run: RunRecord
    snapshots: int  # audiences whose snapshot it has taken
    acknowledged: dict[tuple[str, str], int]  # per (audience, destination): changes acknowledged so far


def in_progress(conn: Connection, at: datetime) -> InProgress | None:
    """The latest run, if it is still going: not finished, and its process holds the run lease
    (a killed run stays "running" until the next run finishes and calls it crashed). Its
    progress comes from what it has recorded: snapshots taken, and the ledger rows
    acknowledged since it started."""
    row = conn.execute(select(RUN).order_by(RUN.c.id.desc()).limit(1)).first()
    if row is None or row.outcome != RunOutcome.RUNNING.value:
        return None
    run = RunRecord(**row._mapping)
    lease = conn.execute(select(LEASE.c.name).where(
        LEASE.c.name == RUN_LEASE, LEASE.c.expires_at > at, LEASE.c.host == run.host, LEASE.c.pid == run.pid,
    )).first()
    if lease is None:
        return None
    snapshots = conn.scalar(select(func.count()).select_from(RUN_AUDIENCE)
                            .where(RUN_AUDIENCE.c.run_id == run.id)) or 0
    acknowledged = conn.execute(
        select(L.c.audience_key, L.c.destination, func.count())
        .where(L.c.acked_at >= run.started_at)
        .group_by(L.c.audience_key, L.c.destination)
    )
    return InProgress(run, int(snapshots), {(r[0], r[1]): int(r[2]) for r in acknowledged})


def last_snapshot_rows(conn: Connection, audience_key: str) -> int | None:
    """Rows the audience's query returned in its latest successful snapshot, if any."""
    query = (
        select(RUN_AUDIENCE.c.rows)
        .where(RUN_AUDIENCE.c.audience_key == audience_key, RUN_AUDIENCE.c.error.is_(None))
        .order_by(RUN_AUDIENCE.c.run_id.desc())
        .limit(1)
    )
    value = conn.scalar(query)
    return int(value) if value is not None else None


def last_successes(conn: Connection) -> dict[tuple[str, str], datetime]:
    """When each (audience, destination) pair last finished a run with everything delivered."""
    query = (
        select(RUN_RESULT.c.audience_key, RUN_RESULT.c.destination, func.max(RUN.c.finished_at))
        .join(RUN, RUN.c.id == RUN_RESULT.c.run_id)
        .where(RUN_RESULT.c.outcome == PairOutcome.OK.value, RUN.c.finished_at.is_not(None))
        .group_by(RUN_RESULT.c.audience_key, RUN_RESULT.c.destination)
    )
    return {(r[0], r[1]): r[2] for r in conn.execute(query) if isinstance(r[2], datetime)}


def acked_true_count(conn: Connection, audience_key: str, destination: str) -> int:
    """Users the destination holds as `true`: at Nat a user whose email changed has a row per
    email, and counts once."""
    query = select(func.count(func.distinct(L.c.subject))).select_from(L).where(
        L.c.audience_key == audience_key, L.c.destination == destination, L.c.acked == true()
    )
    return conn.scalar(query) or 0
