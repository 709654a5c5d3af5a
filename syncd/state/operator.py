"""Operator queries: resync marks, failures and their requeue, run history, guard approvals."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    case,
    delete,
    func,
    select,
    true,
    update,
)

from syncd.model import RUN_TOTALS, PairOutcome, Totals
from syncd.state.diff import earlier_ident, still_work
from syncd.state.engine import now, upsert
from syncd.state.runs import RunRecord
from syncd.state.tables import (
    APPROVAL,
    ATTRIBUTE,
    RUN,
    RUN_AUDIENCE,
    RUN_RESULT,
    L,
)


class Marked(NamedTuple):
    """What `mark_resync` marked."""

    users: int  # users the destination holds as `true`: a run sends them their value again
    # Of the rows marked, those under a member's earlier email (Nat): they keep `true` until the
    # user leaves, so nothing is resent to them; they are why rows marked exceed users resent.
    earlier_emails: int


def mark_resync(engine: Engine, audience_key: str, destination: str) -> Marked:
    """Make the next run send the pair's full state again.

    Users the destination holds as `true` are marked "may hold false": members get
    `true` again, non-members get `false` as any leave does. Members never
    acknowledged need no mark. The attribute check (User.com) is redone too.
    """
    held = and_(L.c.audience_key == audience_key, L.c.destination == destination, L.c.acked == true())
    with engine.begin() as conn:
        users = conn.scalar(select(func.count(func.distinct(L.c.subject))).where(held)) or 0
        earlier = conn.scalar(select(func.count()).select_from(L).where(held, earlier_ident(audience_key)))
        conn.execute(update(L).where(held).values(maybe_false=True))
        conn.execute(delete(ATTRIBUTE).where(ATTRIBUTE.c.audience_key == audience_key,
                                             ATTRIBUTE.c.destination == destination))
    return Marked(int(users), int(earlier or 0))



@dataclass
class FailureGroup:
    destination: str
    audience_key: str
    status: int | None
    reason: str
    count: int
    samples: list[str]


def failures(engine: Engine, destination: str | None = None, samples: int = 5) -> list[FailureGroup]:
    """Changes the destination rejected last time that are still to be sent, grouped by reason."""
    with engine.begin() as conn:
        return _failures(conn, destination, samples)


def _failures(conn: Connection, destination: str | None, samples: int) -> list[FailureGroup]:
    groups: dict[tuple[str, str, int | None, str], FailureGroup] = {}
    query = (
        select(L.c.destination, L.c.audience_key, L.c.last_status, L.c.last_error,
               func.coalesce(L.c.user_id, L.c.anonymous_id))
        .where(L.c.failed == true(), still_work(L.c.audience_key))
        .order_by(L.c.destination, L.c.audience_key, L.c.subject)
    )
    if destination is not None:
        query = query.where(L.c.destination == destination)
    for dest, key, status, error, who in conn.execute(query):
        reason = error or "rejected"
        group = groups.setdefault((dest, key, status, reason),
                                  FailureGroup(dest, key, status, reason, 0, []))
        group.count += 1
        if len(group.samples) < samples:
            group.samples.append(who)
    return sorted(groups.values(), key=lambda g: (g.destination, g.audience_key, -g.count, g.reason))


def requeue_failures(engine: Engine, destination: str | None = None) -> dict[tuple[str, str], int]:
    """Clear the failure marks (reason, attempts) of rejected changes; per pair, how many."""
    where = and_(L.c.failed == true(), still_work(L.c.audience_key))
    if destination is not None:
        where = and_(where, L.c.destination == destination)
    with engine.begin() as conn:
        pairs = conn.execute(
            select(L.c.audience_key, L.c.destination, func.count())
            .where(where).group_by(L.c.audience_key, L.c.destination)
        ).all()
        conn.execute(update(L).where(where).values(failed=False, attempts=0, last_status=None,
                                                   last_error=None))
    return {(key, dest): count for key, dest, count in pairs}


@dataclass(frozen=True)
class RunSummary(RunRecord, Totals):
    """A run with its pairs' Totals summed, for `history` and the page."""

    pairs: int
    held: int  # pairs whose exits a guard held
    source_errors: int  # audiences whose query failed


def history(engine: Engine, limit: int) -> list[RunSummary]:
    """`syncd history`: the last `limit` runs, newest first, with their pairs' totals summed."""
    with engine.begin() as conn:
        return recent_runs(conn, limit)


def recent_runs(conn: Connection, limit: int) -> list[RunSummary]:
    """The last `limit` runs, newest first, with their pairs' totals summed."""
    totals = (
        select(RUN_RESULT.c.run_id,
               *(func.sum(RUN_RESULT.c[name]).label(name) for name in RUN_TOTALS),
               func.count().label("pairs"),
               func.sum(case((RUN_RESULT.c.outcome == PairOutcome.HELD.value, 1), else_=0)).label("held"))
        .group_by(RUN_RESULT.c.run_id)
        .subquery()
    )
    errors = (
        select(RUN_AUDIENCE.c.run_id, func.count().label("source_errors"))
        .where(RUN_AUDIENCE.c.error.is_not(None))
        .group_by(RUN_AUDIENCE.c.run_id)
        .subquery()
    )
    query = (
        select(RUN, *(func.coalesce(totals.c[n], 0).label(n) for n in (*RUN_TOTALS, "pairs", "held")),
               func.coalesce(errors.c.source_errors, 0).label("source_errors"))
        .outerjoin(totals, totals.c.run_id == RUN.c.id)
        .outerjoin(errors, errors.c.run_id == RUN.c.id)
        .order_by(RUN.c.id.desc())
        .limit(limit)
    )
    return [RunSummary(**row._mapping) for row in conn.execute(query)]



class Approval(NamedTuple):
    """A row of `guard_approval`: `syncd approve` let up to `exits` held exits go."""

    audience_key: str
    destination: str
    exits: int
    acknowledged: int
    approved_at: datetime
    approved_by: str


def approval(conn: Connection, audience_key: str, destination: str) -> Approval | None:
    row = conn.execute(select(APPROVAL).where(APPROVAL.c.audience_key == audience_key,
                                              APPROVAL.c.destination == destination)).first()
    return Approval(**row._mapping) if row is not None else None


def record_approval(engine: Engine, audience_key: str, destination: str, exits: int,
                    acknowledged: int, by: str) -> None:
    values = {"audience_key": audience_key, "destination": destination, "exits": exits,
              "acknowledged": acknowledged, "approved_at": now(), "approved_by": by}
    with engine.begin() as conn:
        stmt = upsert(conn, APPROVAL)
        conn.execute(stmt.on_conflict_do_update(
            index_elements=[APPROVAL.c.audience_key, APPROVAL.c.destination],
            set_={k: stmt.excluded[k] for k in ("exits", "acknowledged", "approved_at", "approved_by")},
        ), values)


def drop_approval(engine: Engine, audience_key: str, destination: str) -> None:
    with engine.begin() as conn:
        conn.execute(delete(APPROVAL).where(APPROVAL.c.audience_key == audience_key,
                                            APPROVAL.c.destination == destination))
