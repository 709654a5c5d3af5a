"""A destination's work counted the ways its calls can group it (syncd/estimate.py's
Workload): its users, which of them are plain (nothing but memberships to send) with a
known id (mass updates) or of unknown id (what a listing could teach), and their changes per
(audience, value). `plan` and a run count a destination's work table (every pair's list at
once: a user's changes of several audiences share calls); `status` counts one pair's diff."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace
from typing import Any

from sqlalchemy import Connection, Table, and_, case, func, literal, or_, select, true

from syncd.estimate import Workload
from syncd.state.diff import pair_changes
from syncd.state.listing import listing_state
from syncd.state.tables import REMOTE_ID, M
from syncd.state.work import WORK

KNOWN, UNKNOWN, CALL = "known", "unknown", "call"


def count_work(conn: Connection, destination: str, members: Table = M, held: Collection[str] = (),
               audiences: Collection[str] | None = None) -> Workload:
    """The destination's work table as a run sends it: every sendable change, but the exits of
    the `held` audiences (a guard holds them); only the changes of `audiences` if given."""
    w = WORK.c
    where = and_(w.sendable == true(), or_(w.value == true(), w.audience_key.not_in(list(held))))
    if audiences is not None:
        where = and_(where, w.audience_key.in_(list(audiences)))
    rows = select(w.audience_key, w.subject, w.ident, w.value).where(where).subquery()
    return _with_listing(conn, destination, _count(conn, destination, rows, members, one_per_user=False))


def count_pair(conn: Connection, audience: str, destination: str, needs_email: bool) -> Workload:
    """One pair's changes now, from its diff (no work table: `status` and the page read this)."""
    changes = pair_changes(audience, destination, needs_email).subquery()
    rows = (select(literal(audience).label("audience_key"), changes.c.subject, changes.c.ident,
                   changes.c.value).where(changes.c.sendable == true()).subquery())
    # A pair has at most one change per user (an enter at its current ident, or a leave).
    return _with_listing(conn, destination, _count(conn, destination, rows, M, one_per_user=True))


def _with_listing(conn: Connection, destination: str, work: Workload) -> Workload:
    state = listing_state(conn, destination)
    return replace(work, remote_users=state.users, listing_left=state.left)


def _count(conn: Connection, destination: str, rows: Any, members: Table, one_per_user: bool) -> Workload:
    m, r = members.c, rows.c
    # An entry with extra traits needs a call of the user's own (a mass update sets one value).
    solo = case((and_(r.value == true(), m.traits.is_not(None)), 1), else_=0)
    joined = rows.outerjoin(members, and_(m.audience_key == r.audience_key, m.subject == r.subject))
    if one_per_user:
        changes = (select(r.audience_key, r.value, r.subject, solo.label("solo")).select_from(joined)
                   .subquery())
        users = changes
    else:  # a user is plain only if none of its changes (in any audience) needs its own call
        users = (select(r.subject, r.ident, func.max(solo).label("solo")).select_from(joined)
                 .group_by(r.subject, r.ident).subquery())
        same_user = and_(users.c.subject == r.subject, users.c.ident == r.ident)
        changes = (select(r.audience_key, r.value, r.subject, users.c.solo)
                   .select_from(rows.join(users, same_user)).subquery())
    by_change = conn.execute(_grouped(destination, changes, changes.c.audience_key, changes.c.value)).all()
    people = dict.fromkeys((KNOWN, UNKNOWN, CALL), 0)
    if one_per_user:
        for *_, k, n in by_change:
            people[k] += n
    else:
        people.update(conn.execute(_grouped(destination, users)).all())
    return Workload(
        changes=sum(n for *_, n in by_change), users=sum(people.values()),
        plain_known=people[KNOWN], plain_unknown=people[UNKNOWN],
        known_changes={(key, bool(value)): n for key, value, k, n in by_change if k == KNOWN},
        unknown_changes={(key, bool(value)): n for key, value, k, n in by_change if k == UNKNOWN},
    )


def _grouped(destination: str, users: Any, *by: Any) -> Any:
    """Rows of `users` counted per kind (and `by`'s columns): a user's kind is plain with a
    known id (mass updates), plain of unknown id (a listing may find it), or a call of its own
    (extra traits, or missing from the last complete listing)."""
    ids = REMOTE_ID.c
    kind = case((users.c.solo == 1, CALL), (ids.subject.is_(None), UNKNOWN), (ids.remote_id.is_(None), CALL),
                else_=KNOWN)
    known = and_(ids.destination == destination, ids.subject == users.c.subject)
    kinds = select(*by, kind.label("kind")).select_from(users.outerjoin(REMOTE_ID, known)).subquery()
    columns = [*(kinds.c[column.name] for column in by), kinds.c.kind]
    return select(*columns, func.count()).group_by(*columns)
