"""The lists a run pages through: one pair's diff (state/diff.py) computed once into a
temporary table (WorkList), the lists of one destination's pairs sharing it
(DestinationWork), so a page takes the same users' changes of other audiences along."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Collection, Sequence
from contextlib import suppress
from typing import Any, TypeVar

from sqlalchemy import (
    Boolean,
    Column,
    ColumnElement,
    Connection,
    Engine,
    Index,
    MetaData,
    Table,
    Text,
    and_,
    bindparam,
    case,
    false,
    func,
    insert,
    literal,
    or_,
    select,
    true,
    tuple_,
    update,
)
from sqlalchemy.exc import SQLAlchemyError

from syncd.model import Change, Enter, Leave
from syncd.state.diff import PlanCounts, count_changes, leave_condition, pair_changes
from syncd.state.snapshots import member_count
from syncd.state.tables import L, M, UTCDateTime

T = TypeVar("T")


WORK = Table(
    "syncd_work", MetaData(),
    Column("audience_key", Text, primary_key=True),
    Column("value", Boolean, primary_key=True), Column("subject", Text, primary_key=True),
    Column("ident", Text, primary_key=True),
    Column("sendable", Boolean, nullable=False), Column("failed", Boolean, nullable=False),
    Column("tried", Boolean, nullable=False), Column("pending_since", UTCDateTime()),
    # Read by a page (its own audience's, or another's riding along): not read again.
    Column("taken", Boolean, nullable=False, default=False),
    Index("syncd_work_user", "subject", "ident"),  # a page's users' changes in other audiences
    prefixes=["TEMPORARY"],
    # Room in each page for its rows' next versions: marking a page taken is then a HOT update
    # on PostgreSQL (no new index entries), 7.3 -> 1.5 µs a change (bench/README §9).
    postgresql_with={"fillfactor": 50},
)


def create_work(conn: Connection) -> None:
    """The (empty) work table of one destination's lists, private to `conn`."""
    WORK.drop(conn, checkfirst=True)  # left over on a pooled connection
    WORK.create(conn)


def drop_work(conn: Connection) -> None:
    with suppress(SQLAlchemyError):  # an aborted transaction: its error matters, not this one
        WORK.drop(conn, checkfirst=True)


class DestinationWork:
    """One destination's work lists for a run, on a connection of its own (given the engine).

    Every pair's list goes into one temporary table (`make`), so a page of one pair can take
    the same users' changes of the other pairs along (`WorkList.riders`): one call per user.
    It owns its connection, so it commits its own transactions: once the table is made, once
    each list is made and after each page or riders taken, so no transaction stays open
    while changes are sent. A context manager: the table is dropped and the connection
    closed on the way out."""

    def __init__(self, engine: Engine, destination: str, needs_email: bool) -> None:
        self.engine, self.destination, self.needs_email = engine, destination, needs_email

    def __enter__(self) -> DestinationWork:
        self.conn = self.engine.connect()
        try:
            create_work(self.conn)
            self.conn.commit()
        except BaseException:
            self.conn.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            with suppress(SQLAlchemyError):  # an aborted transaction: its error matters
                drop_work(self.conn)
                self.conn.commit()  # a rollback would keep the table in a pooled PostgreSQL session
        finally:
            self.conn.close()

    def on_connection(self, step: Callable[[Connection], T]) -> T:
        """`step(conn)` on the lists' own connection (the work table is private to it), then
        committed: a look at the lists, or a write that joins them (state/listing.py)."""
        result = step(self.conn)
        self.conn.commit()
        return result

    def make(self, audience_key: str) -> WorkList:
        """The pair's list, made and committed (the run's biggest query: callers run it in a
        thread)."""
        work = WorkList(self.conn, audience_key, self.destination, self.needs_email, commits=True)
        work.make(fresh=False)
        return work


class WorkList:
    """One pair's diff, computed once: `make()` puts every change into a temporary table
    private to `conn` (no lock, no WAL) and counts them; `page()` reads it back, 500 key
    lookups a page; `drop()` removes it. Computing the diff per page instead re-read the
    whole audience for every page; with 1% churn that was most of an incremental run.

    The lists of one destination's pairs can share the table (DestinationWork): a page
    then also takes the same users' changes of the other audiences (`riders`), so a user
    whose audiences changed together gets one call.

    On a caller's connection it never commits (the state/ rule: `plan` rolls its dry run
    back); the lists DestinationWork makes on its own connection (`commits`) commit each
    step. As a context manager: make, then drop."""

    counts: PlanCounts

    def __init__(self, conn: Connection, audience_key: str, destination: str, needs_email: bool,
                 members: Table = M, *, commits: bool = False) -> None:
        self.conn, self.audience_key, self.destination = conn, audience_key, destination
        self.needs_email, self.members, self.commits = needs_email, members, commits

    def _done(self) -> None:
        """The end of one step: committed where the list's owner owns the connection."""
        if self.commits:
            self.conn.commit()

    def make(self, fresh: bool = True) -> PlanCounts:
        conn = self.conn
        if fresh:
            create_work(conn)
        changes = pair_changes(self.audience_key, self.destination, self.needs_email, self.members).subquery()
        conn.execute(insert(WORK).from_select(
            ["audience_key", "subject", "ident", "value", "sendable", "failed", "tried", "pending_since",
             "taken"],
            select(literal(self.audience_key), changes.c.subject, changes.c.ident, changes.c.value,
                   changes.c.sendable, changes.c.failed, changes.c.tried, changes.c.pending_since,
                   false())))
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"ANALYZE {WORK.name}")  # temporary tables get no statistics otherwise
        mine = select(WORK).where(WORK.c.audience_key == self.audience_key).subquery()
        self.counts = count_changes(conn, mine, member_count(conn, self.audience_key, self.members))
        self._done()
        return self.counts

    def drop(self) -> None:
        drop_work(self.conn)

    def __enter__(self) -> WorkList:
        try:
            self.make()
            return self
        except BaseException:
            self.drop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.drop()

    def page(self, value: bool, after: tuple[str, str] | str, limit: int) -> list[Change]:
        """The next changes (by subject and ident, after `after`: "" or the last page's
        last `Change.cursor`) not taken yet: enters (`value` true) that can be sent, or
        leaves; at most `limit`, with each user's data and messageId seq and nonce. An enter
        without a ledger row yet gets a new nonce here; mark_in_flight stores it with the
        row. The page's changes are taken: no other page carries them."""
        w = WORK.c
        cursor = (after, "") if isinstance(after, str) else after
        mine = and_(w.audience_key == self.audience_key, w.value == value, w.taken == false(),
                    tuple_(w.subject, w.ident) > tuple_(*cursor))
        if value:
            mine = and_(mine, w.sendable == true())
        changes = [change for _, change in self._changes(mine, value, (w.subject, w.ident), limit, cursor[0])]
        if changes:
            upto = tuple_(w.subject, w.ident) <= tuple_(*changes[-1].cursor)
            self.conn.execute(update(WORK).where(mine, upto).values(taken=True))
        self._done()
        return changes

    def riders(self, page: Sequence[Change], audiences: Collection[str],
               enters_only: Collection[str] = ()) -> list[tuple[str, Change]]:
        """The changes of other `audiences` for the users (subject and ident) of `page`,
        not taken yet, as (audience key, change), now taken: they go out in the same calls
        as the page's. Audiences in `enters_only` give only their enters (their exits are
        held by a guard)."""
        others = [key for key in audiences if key != self.audience_key]
        if not page or not others:
            return []
        w = WORK.c
        in_page = tuple_(w.subject, w.ident).in_([c.cursor for c in page])
        rides = and_(w.audience_key.in_(others), w.taken == false(), w.sendable == true(), in_page)
        if enters_only:
            rides = and_(rides, or_(w.value == true(), w.audience_key.not_in(list(enters_only))))
        found = [*self._changes(and_(rides, w.value == true()), True, (w.audience_key, w.subject, w.ident)),
                 *self._changes(and_(rides, w.value == false()), False, (w.audience_key, w.subject, w.ident))]
        if found:
            self.conn.execute(update(WORK).where(
                w.audience_key == bindparam("b_key"), w.value == bindparam("b_value"),
                w.subject == bindparam("b_subject"), w.ident == bindparam("b_ident"),
            ).values(taken=True), [{"b_key": key, "b_value": c.value, "b_subject": c.subject,
                                    "b_ident": c.ident} for key, c in found])
        self._done()
        return found

    def _changes(self, where: ColumnElement[bool], value: bool, order: tuple[Any, ...],
                 limit: int | None = None, from_subject: str = "") -> list[tuple[str, Change]]:
        """The work rows `where` (all of one `value`) as (audience key, change). None of them
        is before `from_subject`, so neither are their members: said, PostgreSQL reads the
        members from there on, where it read the audience's every member before the page for
        each page (quadratic over a first sync)."""
        w = WORK.c
        ledger_row = and_(L.c.audience_key == w.audience_key, L.c.destination == self.destination,
                          L.c.ident == w.ident, L.c.subject == w.subject)
        if value:
            m = self.members.c
            members = and_(m.audience_key == w.audience_key, m.subject == w.subject,
                           m.subject >= from_subject)
            enters = (
                select(m.subject, m.user_id, m.anonymous_id, m.email, m.url, m.traits, _change_seq(True),
                       w.ident, L.c.nonce, w.audience_key)
                .select_from(WORK.join(self.members, members).outerjoin(L, ledger_row))
                .where(where)
            )
            rows = list(self.conn.execute(enters.order_by(*order).limit(limit)))
            fresh = iter(new_nonces(sum(r[8] is None for r in rows)))
            return [(r[9], Enter(subject=r[0], user_id=r[1], anonymous_id=r[2], email=r[3], url=r[4],
                                 traits=json.loads(r[5]) if r[5] else {}, seq=r[6], ident=r[7],
                                 nonce=r[8] if r[8] is not None else next(fresh))) for r in rows]
        leaves = (
            select(L.c.subject, L.c.user_id, L.c.anonymous_id, L.c.email, _change_seq(False),
                   L.c.ident, L.c.nonce, w.audience_key)
            .select_from(WORK.join(L, ledger_row))
            .where(where)
        )
        rows = list(self.conn.execute(leaves.order_by(*order).limit(limit)))
        return [(r[7], Leave(subject=r[0], user_id=r[1], anonymous_id=r[2], email=r[3], seq=r[4],
                             ident=r[5], nonce=r[6])) for r in rows]

    def leaves_left(self) -> int:
        """Leaves of the list the destination has still not acknowledged."""
        query = select(func.count()).select_from(WORK.join(L, and_(
            L.c.audience_key == WORK.c.audience_key, L.c.destination == self.destination,
            L.c.ident == WORK.c.ident, L.c.subject == WORK.c.subject,
        ))).where(WORK.c.audience_key == self.audience_key, WORK.c.value == false(), leave_condition())
        left = self.conn.scalar(query) or 0
        self._done()
        return left


def new_nonces(count: int) -> list[str]:
    """New ledger rows' random tokens (64 bits each: two rows of one subject never share one),
    from one read of the system's randomness: one read per token took ~7 µs on a VM, a fifth
    of a first sync's page reading (bench/README §7)."""
    drawn = os.urandom(8 * count).hex()
    return [drawn[start:start + 16] for start in range(0, len(drawn), 16)]


def _change_seq(value: bool) -> Any:
    """The number in a change's messageId. It moves on every acknowledgement, and also when
    this change replaces an outstanding one of the other value: that one may have landed
    (a crash, a timeout), and a destination deduplicating by messageId must not drop this
    one as a repeat of an older change with the same number."""
    replaces = and_(L.c.pending.is_not(None), L.c.pending == (false() if value else true()))
    return func.coalesce(L.c.seq, 0) + case((replaces, 1), else_=0)
