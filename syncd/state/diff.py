"""The diff: desired (is a member now) vs acknowledged (what the destination holds), per
(audience, destination, user), and PlanCounts; state/work.py keeps it as the lists a run
pages through."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    Connection,
    Table,
    and_,
    case,
    exists,
    false,
    func,
    literal,
    not_,
    or_,
    select,
    true,
    union_all,
)

from syncd.state.snapshots import member_count
from syncd.state.tables import (
    L,
    M,
)

T = TypeVar("T")


def _is_member(audience_key: str | ColumnElement[str], members: Table = M) -> ColumnElement[bool]:
    return exists().where(members.c.audience_key == audience_key, members.c.subject == L.c.subject)


def _enter_condition() -> ColumnElement[bool]:
    # A member needs `true` unless the destination surely holds `true`.
    return or_(L.c.acked.is_(None), L.c.acked == false(), L.c.maybe_false == true())


def leave_condition() -> ColumnElement[bool]:
    # A non-member needs `false` if the destination holds, or may hold, `true`.
    return or_(L.c.acked == true(), L.c.maybe_true == true())


def _has_email(members: Table = M) -> ColumnElement[bool]:
    return and_(members.c.email.is_not(None), members.c.email != "")


def _ident(needs_email: bool, members: Table = M) -> ColumnElement[str]:
    """A member's key at the destination, as the ledger's `ident`: the email where the
    destination keys by it (Nat), else "" (the subject is the key)."""
    return func.coalesce(members.c.email, "") if needs_email else literal("")


def _current(members: Table = M) -> ColumnElement[bool]:
    """The ledger row is the one a member's value goes to: the member's subject, and its
    current email at a destination keyed by email ("" rows: keyed by the subject). Rows of
    a member's earlier emails are not: they keep what they hold until the user leaves."""
    m = members.c
    return exists().where(m.audience_key == L.c.audience_key, m.subject == L.c.subject,
                          or_(L.c.ident == "", L.c.ident == m.email))


def _changes(audience_key: str, destination: str, needs_email: bool, members: Table = M) -> Any:
    """The diff of one pair, one row per change a run would make: (subject, ident, value,
    sendable, failed, tried, pending_since). `value` is true for an enter, false for a leave;
    an enter is not sendable to a destination that needs an email the member lacks (skipped).

    Both sides read their whole table once, in key order: members joined to the ledger row
    of their current ident for the enters, the pair's ledger rows anti-joined to the members
    for the leaves: a user who left gets `false` at every ident (email) that may hold `true`."""
    m = members.c
    failed = func.coalesce(L.c.failed, false())
    tried = or_(L.c.pending.is_not(None), failed)
    ident = _ident(needs_email, members)
    enters = (
        select(m.subject, ident.label("ident"), true().label("value"),
               (_has_email(members) if needs_email else true()).label("sendable"),
               failed.label("failed"), tried.label("tried"), L.c.pending_since)
        .select_from(members.outerjoin(L, and_(L.c.audience_key == m.audience_key,
                                               L.c.destination == destination,
                                               L.c.ident == ident,
                                               L.c.subject == m.subject)))
        .where(m.audience_key == audience_key, _enter_condition())
    )
    leaves = (
        select(L.c.subject, L.c.ident, false(), true(), failed, tried, L.c.pending_since)
        .where(L.c.audience_key == audience_key, L.c.destination == destination, leave_condition(),
               not_(_is_member(audience_key, members)))
    )
    return union_all(enters, leaves)


@dataclass
class PlanCounts:
    members: int
    entered: int  # users to send `true` (one change each)
    left: int  # users to send `false`: what a person and the guard count (as acknowledged)
    # Changes to send `false`: at Nat one per email that may hold `true`, so a user who
    # leaves with two emails is one `left` and two leaves; elsewhere the same as `left`.
    leaves: int
    skipped: int  # would enter, but the destination needs an email they lack
    failed: int  # of the work, how many were rejected last time
    retries: int = 0  # of the work, how many were attempted before and not acknowledged
    oldest_pending: datetime | None = None  # since when the oldest of those has been tried

    @property
    def changes(self) -> int:
        """The changes a run would send: every enter and every leave."""
        return self.entered + self.leaves


def count_changes(conn: Connection, changes: Any, members: int) -> PlanCounts:
    c = changes.c
    enter, sendable = c.value == true(), c.sendable == true()
    # Still one pass: the users who leave are the distinct subjects among the leaves.
    row = conn.execute(select(
        _count_if(and_(enter, sendable)), _count_if(and_(enter, not_(sendable))), _count_if(not_(enter)),
        _count_if(and_(sendable, c.failed == true())), _count_if(and_(sendable, c.tried == true())),
        func.count(func.distinct(case((not_(enter), c.subject)))), func.min(c.pending_since),
    ).select_from(changes)).one()
    entered, skipped, leaves, failed, retries, left = (int(n or 0) for n in row[:6])
    return PlanCounts(members, entered, left, leaves, skipped, failed, retries,
                      row[6] if isinstance(row[6], datetime) else None)


def _count_if(condition: ColumnElement[bool]) -> Any:
    return func.sum(case((condition, 1), else_=0))


def pair_changes(audience_key: str, destination: str, needs_email: bool, members: Table = M) -> Any:
    """The pair's diff as rows (subject, ident, value, sendable, failed, tried, pending_since):
    one per change a run would make (state/workload.py counts them for `status`)."""
    return _changes(audience_key, destination, needs_email, members)


def plan_counts(conn: Connection, audience_key: str, destination: str, needs_email: bool,
                members: Table = M) -> PlanCounts:
    """What a run would do for the pair now, counted without keeping the changes (status,
    metrics, approve): one pass over each side of the diff."""
    changes = _changes(audience_key, destination, needs_email, members).subquery()
    return count_changes(conn, changes, member_count(conn, audience_key, members))


def earlier_ident(audience_key: str) -> ColumnElement[bool]:
    """A ledger row under a member's earlier email (a destination keyed by email): it keeps
    what it holds until the user leaves, and no run sends it anything before."""
    return and_(_is_member(audience_key), not_(_current()))


def still_work(audience_key: str | ColumnElement[str]) -> ColumnElement[bool]:
    """A ledger row a run would still send: an enter for a member (at its current email, where
    the destination keys by email), a leave for a non-member."""
    return or_(and_(_current(), _enter_condition()),
               and_(not_(_is_member(audience_key)), leave_condition()))
