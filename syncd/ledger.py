"""The state store: snapshots, what each destination holds, runs, the run lease.

All bulk work is SQLAlchemy Core against the SQLModel tables, in short
transactions, so the same code serves SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    and_,
    bindparam,
    delete,
    exists,
    false,
    func,
    insert,
    literal,
    not_,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from syncd.models import Attribute, Lease, Ledger, Member, Run, RunAudience, RunResult
from syncd.plan import Change, Enter, Leave, SnapshotRow

M = Member.__table__  # type: ignore[attr-defined]
L = Ledger.__table__  # type: ignore[attr-defined]
RUN = Run.__table__  # type: ignore[attr-defined]
RUN_AUDIENCE = RunAudience.__table__  # type: ignore[attr-defined]
RUN_RESULT = RunResult.__table__  # type: ignore[attr-defined]
ATTRIBUTE = Attribute.__table__  # type: ignore[attr-defined]
LEASE = Lease.__table__  # type: ignore[attr-defined]

INSERT_BATCH = 5_000


def now() -> datetime:
    return datetime.now(UTC)


def _upsert(conn: Connection, table: Any) -> Any:
    """The dialect's INSERT that understands ON CONFLICT."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


# --- snapshots -------------------------------------------------------------------------


@dataclass
class SnapshotCounts:
    rows: int = 0  # rows the query returned
    members: int = 0
    no_identifier: int = 0  # skipped: no usable user_id / anonymous_id
    too_large: int = 0  # skipped: the Identify would exceed 32 KB
    duplicates: int = 0  # skipped: identifier already seen (the first row wins)
    invalid_email: int = 0  # kept, without the email (Nat skips them)

    @property
    def skipped(self) -> int:
        return self.no_identifier + self.too_large + self.duplicates


def replace_members(engine: Engine, audience_key: str, rows: Iterable[SnapshotRow],
                    counts: SnapshotCounts) -> SnapshotCounts:
    """Replace an audience's members with a fresh snapshot, in one transaction.

    `rows` are the usable rows (the source counts the unusable ones in `counts`).
    A later row with an identifier already seen is a duplicate: the first one
    wins. If the iterator raises, the previous snapshot stays.
    """
    fed = 0
    with engine.begin() as conn:
        conn.execute(delete(M).where(M.c.audience_key == audience_key))
        stmt = _upsert(conn, M).on_conflict_do_nothing()
        batch: list[dict[str, Any]] = []
        for row in rows:
            fed += 1
            batch.append(row.as_member(audience_key))
            if len(batch) >= INSERT_BATCH:
                conn.execute(stmt, batch)
                batch = []
        if batch:
            conn.execute(stmt, batch)
        counts.members = member_count(conn, audience_key)
    counts.duplicates = fed - counts.members
    return counts


def member_count(conn: Connection, audience_key: str) -> int:
    query = select(func.count()).select_from(M).where(M.c.audience_key == audience_key)
    return conn.scalar(query) or 0


# --- the diff --------------------------------------------------------------------------


def _is_member(audience_key: str) -> ColumnElement[bool]:
    return exists().where(and_(M.c.audience_key == audience_key, M.c.subject == L.c.subject))


def _enter_condition() -> ColumnElement[bool]:
    # A member needs `true` unless the destination surely holds `true`.
    return or_(L.c.acked.is_(None), L.c.acked == false(), L.c.maybe_false == true())


def _leave_condition() -> ColumnElement[bool]:
    # A non-member needs `false` if the destination holds, or may hold, `true`.
    return or_(L.c.acked == true(), L.c.maybe_true == true())


def _enters_from(audience_key: str, destination: str) -> Any:
    joined = M.outerjoin(
        L,
        and_(
            L.c.audience_key == M.c.audience_key,
            L.c.destination == destination,
            L.c.subject == M.c.subject,
        ),
    )
    return joined, and_(M.c.audience_key == audience_key, _enter_condition())


def _leaves_where(audience_key: str, destination: str) -> ColumnElement[bool]:
    return and_(
        L.c.audience_key == audience_key,
        L.c.destination == destination,
        _leave_condition(),
        not_(_is_member(audience_key)),
    )


def _has_email() -> ColumnElement[bool]:
    return and_(M.c.email.is_not(None), M.c.email != "")


@dataclass
class PlanCounts:
    members: int
    entered: int
    left: int
    skipped: int  # would enter, but the destination needs an email they lack
    failed: int  # of the work, how many were rejected last time


def plan_counts(conn: Connection, audience_key: str, destination: str, needs_email: bool) -> PlanCounts:
    joined, where = _enters_from(audience_key, destination)
    entered_all = select(func.count()).select_from(joined).where(where)
    skipped = 0
    entered = conn.scalar(entered_all) or 0
    if needs_email:
        skipped = conn.scalar(entered_all.where(not_(_has_email()))) or 0
        entered -= skipped
    left = conn.scalar(
        select(func.count()).select_from(L).where(_leaves_where(audience_key, destination))
    ) or 0
    failed_enters = select(func.count()).select_from(joined).where(where, L.c.failed == true())
    if needs_email:
        failed_enters = failed_enters.where(_has_email())
    failed = (conn.scalar(failed_enters) or 0) + (conn.scalar(
        select(func.count()).select_from(L).where(
            _leaves_where(audience_key, destination), L.c.failed == true()
        )
    ) or 0)
    return PlanCounts(member_count(conn, audience_key), entered, left, skipped, failed)


def enters_page(
    conn: Connection, audience_key: str, destination: str, needs_email: bool, after: str, limit: int
) -> list[Change]:
    joined, where = _enters_from(audience_key, destination)
    query = (
        select(M.c.subject, M.c.user_id, M.c.anonymous_id, M.c.email, M.c.url, M.c.traits,
               func.coalesce(L.c.seq, 0))
        .select_from(joined)
        .where(where, M.c.subject > after)
        .order_by(M.c.subject)
        .limit(limit)
    )
    if needs_email:
        query = query.where(_has_email())
    return [
        Enter(subject=r[0], user_id=r[1], anonymous_id=r[2], email=r[3], url=r[4],
              traits=json.loads(r[5]) if r[5] else {}, seq=r[6])
        for r in conn.execute(query)
    ]


def leaves_page(
    conn: Connection, audience_key: str, destination: str, after: str, limit: int
) -> list[Change]:
    query = (
        select(L.c.subject, L.c.user_id, L.c.anonymous_id, L.c.email, L.c.seq)
        .where(_leaves_where(audience_key, destination), L.c.subject > after)
        .order_by(L.c.subject)
        .limit(limit)
    )
    return [
        Leave(subject=r[0], user_id=r[1], anonymous_id=r[2], email=r[3], seq=r[4])
        for r in conn.execute(query)
    ]


# --- recording sends -------------------------------------------------------------------


def mark_in_flight(engine: Engine, audience_key: str, destination: str, changes: Sequence[Change]) -> None:
    """Written and committed before the requests leave: a crash now is visible later."""
    if not changes:
        return
    at = now()
    rows = [
        {"audience_key": audience_key, "destination": destination, "subject": c.subject,
         "user_id": c.user_id, "anonymous_id": c.anonymous_id, "email": c.email,
         "pending": c.value, "in_flight": c.value, "pending_since": at}
        for c in changes
    ]
    with engine.begin() as conn:
        stmt = _upsert(conn, L)
        stmt = stmt.on_conflict_do_update(
            index_elements=[L.c.audience_key, L.c.destination, L.c.subject],
            set_={
                "user_id": stmt.excluded.user_id,
                "anonymous_id": stmt.excluded.anonymous_id,
                "email": stmt.excluded.email,
                "pending": stmt.excluded.pending,
                "in_flight": stmt.excluded.in_flight,
                "pending_since": func.coalesce(L.c.pending_since, stmt.excluded.pending_since),
            },
        )
        conn.execute(stmt, rows)


@dataclass(frozen=True)
class Outcome:
    """What became of one change in this run."""

    subject: str
    value: bool
    acked: bool = False
    attempts: int = 0
    rejected: bool = False  # the destination refused this change (4xx): retried next run
    uncertain: bool = False  # it may have been applied (timeout after sending)
    status: int | None = None
    error: str | None = None


def _where_subject(audience_key: str, destination: str) -> ColumnElement[bool]:
    return and_(
        L.c.audience_key == audience_key,
        L.c.destination == destination,
        L.c.subject == bindparam("b_subject"),
    )


def record_outcomes(engine: Engine, audience_key: str, destination: str, outcomes: Sequence[Outcome]) -> None:
    at = now()
    acked = [{"b_subject": o.subject, "b_value": o.value} for o in outcomes if o.acked]
    others = [
        {"b_subject": o.subject, "b_attempts": o.attempts, "b_failed": o.rejected,
         "b_status": o.status, "b_error": (o.error or "")[:500] or None,
         "b_maybe_true": o.uncertain and o.value, "b_maybe_false": o.uncertain and not o.value}
        for o in outcomes if not o.acked and (o.attempts or o.rejected)
    ]
    untried = [{"b_subject": o.subject} for o in outcomes
               if not o.acked and not o.attempts and not o.rejected]
    where = _where_subject(audience_key, destination)
    with engine.begin() as conn:
        if untried:
            conn.execute(update(L).where(where).values(in_flight=None), untried)
        if acked:
            conn.execute(
                update(L).where(where).values(
                    acked=bindparam("b_value"), seq=L.c.seq + 1, acked_at=at, pending=None,
                    in_flight=None, maybe_true=False, maybe_false=False, attempts=0,
                    failed=False, last_status=None, last_error=None, pending_since=None,
                ),
                acked,
            )
        if others:
            conn.execute(
                update(L).where(where).values(
                    in_flight=None, attempts=L.c.attempts + bindparam("b_attempts"),
                    failed=bindparam("b_failed"), last_status=bindparam("b_status"),
                    last_error=bindparam("b_error"),
                    maybe_true=or_(L.c.maybe_true, bindparam("b_maybe_true")),
                    maybe_false=or_(L.c.maybe_false, bindparam("b_maybe_false")),
                ),
                others,
            )


def recover_in_flight(engine: Engine) -> int:
    """After a crash, what was in flight may have been applied: remember that."""
    with engine.begin() as conn:
        result = conn.execute(
            update(L).where(L.c.in_flight.is_not(None)).values(
                maybe_true=or_(L.c.maybe_true, L.c.in_flight == true()),
                maybe_false=or_(L.c.maybe_false, L.c.in_flight == false()),
                in_flight=None,
            )
        )
        return result.rowcount or 0


def attribute_ensured(conn: Connection, destination: str, audience_key: str) -> bool:
    query = select(literal(1)).where(
        ATTRIBUTE.c.destination == destination, ATTRIBUTE.c.audience_key == audience_key
    )
    return conn.scalar(query) is not None


def record_attribute(engine: Engine, destination: str, audience_key: str) -> None:
    with engine.begin() as conn:
        stmt = _upsert(conn, ATTRIBUTE).on_conflict_do_nothing()
        conn.execute(stmt, {"destination": destination, "audience_key": audience_key, "ensured_at": now()})


# --- runs ------------------------------------------------------------------------------


def start_run(engine: Engine, snapshot_at: datetime) -> int:
    with engine.begin() as conn:
        result = conn.execute(
            insert(RUN).values(started_at=now(), snapshot_at=snapshot_at, outcome="running",
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
        conn.execute(insert(RUN_RESULT).values(run_id=run_id, **result))


def finish_run(engine: Engine, run_id: int, outcome: str) -> None:
    with engine.begin() as conn:
        conn.execute(update(RUN).where(RUN.c.id == run_id).values(finished_at=now(), outcome=outcome))
        # Runs that never finished (killed) are not "running" forever.
        conn.execute(
            update(RUN).where(RUN.c.outcome == "running", RUN.c.id < run_id).values(outcome="crashed")
        )


def last_run(conn: Connection) -> Any:
    return conn.execute(select(RUN).order_by(RUN.c.id.desc()).limit(1)).first()


def last_results(conn: Connection) -> Iterator[Any]:
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
    yield from conn.execute(query)


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
        .where(RUN_RESULT.c.outcome == "ok", RUN.c.finished_at.is_not(None))
        .group_by(RUN_RESULT.c.audience_key, RUN_RESULT.c.destination)
    )
    return {(r[0], r[1]): r[2] for r in conn.execute(query) if isinstance(r[2], datetime)}


def acked_true_count(conn: Connection, audience_key: str, destination: str) -> int:
    query = select(func.count()).select_from(L).where(
        L.c.audience_key == audience_key, L.c.destination == destination, L.c.acked == true()
    )
    return conn.scalar(query) or 0


def oldest_pending(conn: Connection, audience_key: str, destination: str) -> datetime | None:
    query = select(func.min(L.c.pending_since)).where(
        L.c.audience_key == audience_key, L.c.destination == destination
    )
    value = conn.scalar(query)
    return value if isinstance(value, datetime) or value is None else None


# --- the run lease ---------------------------------------------------------------------


class RunInProgress(Exception):
    """Another syncd process holds the run lease."""


@dataclass(frozen=True)
class LeaseHandle:
    name: str
    holder: str
    ttl: timedelta


LEASE_TTL = timedelta(minutes=5)


def acquire_lease(engine: Engine, name: str = "run", ttl: timedelta = LEASE_TTL) -> LeaseHandle:
    host, pid = socket.gethostname(), os.getpid()
    holder = f"{host}:{pid}:{uuid.uuid4().hex[:8]}"
    at = now()
    values = {"name": name, "holder": holder, "host": host, "pid": pid,
              "acquired_at": at, "expires_at": at + ttl}
    with engine.begin() as conn:
        conn.execute(_upsert(conn, LEASE).on_conflict_do_nothing(), values)
        current = conn.execute(select(LEASE).where(LEASE.c.name == name)).one()
        if current.holder != holder:
            if not _is_stale(current, host, at):
                since = current.acquired_at.strftime("%Y-%m-%d %H:%M:%SZ")
                raise RunInProgress(
                    f"another run is in progress (pid {current.pid} on {current.host}, "
                    f"since {since}); its lease expires at "
                    f"{current.expires_at.strftime('%H:%M:%SZ')}"
                )
            taken = conn.execute(
                update(LEASE).where(LEASE.c.name == name, LEASE.c.holder == current.holder)
                .values(**values)
            ).rowcount
            if taken != 1:
                raise RunInProgress("another run took the lease at the same moment")
    return LeaseHandle(name, holder, ttl)


def _is_stale(current: Any, host: str, at: datetime) -> bool:
    if current.expires_at <= at:
        return True
    return bool(current.host == host and not _pid_alive(current.pid))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def renew_lease(engine: Engine, lease: LeaseHandle) -> bool:
    """Extend our lease; False if it is no longer ours (it expired and was taken over)."""
    with engine.begin() as conn:
        result = conn.execute(
            update(LEASE).where(LEASE.c.name == lease.name, LEASE.c.holder == lease.holder)
            .values(expires_at=now() + lease.ttl)
        )
        return result.rowcount == 1


def release_lease(engine: Engine, lease: LeaseHandle) -> None:
    with engine.begin() as conn:
        conn.execute(delete(LEASE).where(LEASE.c.name == lease.name, LEASE.c.holder == lease.holder))
