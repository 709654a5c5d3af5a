"""The state store: snapshots, what each destination holds, runs, the run lease.

All bulk work is SQLAlchemy Core against the SQLModel tables, in short
transactions, so the same code serves SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    ColumnElement,
    Connection,
    Engine,
    MetaData,
    Table,
    Text,
    and_,
    bindparam,
    case,
    delete,
    exists,
    false,
    func,
    insert,
    literal,
    not_,
    or_,
    select,
    text,
    true,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from syncd.models import (
    Attribute,
    GuardApproval,
    Lease,
    Ledger,
    Member,
    Run,
    RunAudience,
    RunResult,
    UTCDateTime,
)
from syncd.plan import Change, Enter, Leave, SnapshotRow

M = Member.__table__  # type: ignore[attr-defined]
L = Ledger.__table__  # type: ignore[attr-defined]
RUN = Run.__table__  # type: ignore[attr-defined]
RUN_AUDIENCE = RunAudience.__table__  # type: ignore[attr-defined]
RUN_RESULT = RunResult.__table__  # type: ignore[attr-defined]
ATTRIBUTE = Attribute.__table__  # type: ignore[attr-defined]
LEASE = Lease.__table__  # type: ignore[attr-defined]
APPROVAL = GuardApproval.__table__  # type: ignore[attr-defined]

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

    The rows go to an unindexed staging table first (the fastest bulk load each
    database has: executemany of tuples on SQLite, COPY on PostgreSQL), then one
    set-based merge deletes who left, inserts who entered and rewrites only rows
    that changed. With 1% churn that writes ~2% of the rows instead of all of them.
    """
    with engine.begin() as conn:
        _stage_into(conn, M, audience_key, rows, counts)
    if engine.dialect.name == "postgresql":
        _analyze(engine)
    return counts


def _analyze(engine: Engine) -> None:
    """Fresh planner statistics for the diff. Right after a big first snapshot, autovacuum has
    not analysed yet: with "empty" tables PostgreSQL picks a nested loop and the diff of
    100k members takes minutes instead of a second. VACUUM also marks the member pages
    all-visible, so the diff's index-only scans skip the heap; it reads only pages the
    merge changed (the visibility map), and ANALYZE samples: both are cheap.

    An empty ledger (a first run) is not analysed: statistics saying "empty" would stay
    while the initial send fills it, and PostgreSQL then updated each acknowledged row
    by scanning all of the pair's rows. Never analysed, it estimates from the table's size."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM (ANALYZE) member")
        if conn.scalar(select(literal(1)).select_from(L).limit(1)) is not None:
            conn.exec_driver_sql("ANALYZE ledger")


STAGE = "syncd_member_stage"
_MEMBER_COLUMNS = ("user_id", "anonymous_id", "email", "url", "traits")
_STAGE_COLUMNS = ", ".join(("subject", *_MEMBER_COLUMNS))  # SnapshotRow's order


def _stage_into(conn: Connection, target: Table, audience_key: str, rows: Iterable[SnapshotRow],
                counts: SnapshotCounts) -> None:
    """Make `target` (the member table or plan's scratch copy) hold exactly `rows` for the
    audience, by way of the staging table; counts the members and the duplicates. The stage
    is dropped here, not left to ON COMMIT DROP: `syncd plan` never commits."""
    postgres = conn.dialect.name == "postgresql"
    _create_stage(conn, postgres)
    staged = (_copy_stage if postgres else _insert_stage)(conn, rows)
    _merge_stage(conn, target.name, audience_key, postgres)
    conn.exec_driver_sql(f"DROP TABLE {STAGE}")
    counts.members = member_count(conn, audience_key, target)
    counts.duplicates = staged - counts.members


def _create_stage(conn: Connection, postgres: bool) -> None:
    # A temporary table is private to this connection and never reaches the WAL/journal
    # of the shared state. A failed earlier attempt may have left one on a pooled connection.
    # `n` numbers the rows in the order they came, so the first of a duplicated subject
    # wins: SQLite's rowid (an INTEGER PRIMARY KEY) and an identity column on PostgreSQL
    # number them without a value from Python.
    conn.exec_driver_sql(f"DROP TABLE IF EXISTS {STAGE}")
    number = "BIGINT GENERATED ALWAYS AS IDENTITY" if postgres else "INTEGER PRIMARY KEY"
    conn.exec_driver_sql(
        f"CREATE TEMPORARY TABLE {STAGE} (n {number}, subject TEXT NOT NULL, user_id TEXT, "
        "anonymous_id TEXT, email TEXT, url TEXT, traits TEXT)"
        + (" ON COMMIT DROP" if postgres else "")
    )


def _insert_stage(conn: Connection, rows: Iterable[SnapshotRow]) -> int:
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        # sqlite3 streams any iterable: the snapshot is never held in memory whole.
        cursor.executemany(f"INSERT INTO {STAGE} ({_STAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                           rows)  # type: ignore[arg-type]
        staged: int = max(cursor.rowcount, 0)
        # Covering (the rowid `n` is in every index), so the merge reads the stage in
        # subject order and never looks rows up in the table itself.
        cursor.execute(f"CREATE INDEX {STAGE}_subject ON {STAGE} ({_STAGE_COLUMNS})")
    finally:
        cursor.close()
    return staged


def _copy_stage(conn: Connection, rows: Iterable[SnapshotRow]) -> int:
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        with cursor.copy(f"COPY {STAGE} ({_STAGE_COLUMNS}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        staged: int = max(cursor.rowcount, 0)
        cursor.execute(f"ANALYZE {STAGE}")  # temporary tables get no statistics otherwise
    finally:
        cursor.close()
    return staged


def _merge_stage(conn: Connection, target: str, audience_key: str, postgres: bool) -> None:
    """Make `target` equal the stage for this audience: delete who left, then one join finds
    the rows that are new or changed, and only those are written. (An upsert of every row
    checked each one's conflict apart: 990,000 probes to rewrite nothing, 3 s at 1M on
    PostgreSQL; the join is a hash or merge join.)"""
    params = {"key": audience_key}
    conn.execute(text(
        f"DELETE FROM {target} WHERE audience_key = :key "
        f"AND NOT EXISTS (SELECT 1 FROM {STAGE} s WHERE s.subject = {target}.subject)"
    ), params)
    columns = ", ".join(_MEMBER_COLUMNS)
    staged = ", ".join(f"f.{c}" for c in _MEMBER_COLUMNS)
    if postgres:  # the first row of each subject wins
        firsts = f"SELECT DISTINCT ON (subject) subject, {columns} FROM {STAGE} ORDER BY subject, n"
        differs = f"({', '.join(f't.{c}' for c in _MEMBER_COLUMNS)}) IS DISTINCT FROM ({staged})"
    else:  # SQLite: bare columns of a min() aggregate come from the row holding the minimum
        firsts = f"SELECT subject, {columns}, min(n) FROM {STAGE} GROUP BY subject"
        differs = " OR ".join(f"t.{c} IS NOT f.{c}" for c in _MEMBER_COLUMNS)
    updates = ", ".join(f"{c} = excluded.{c}" for c in _MEMBER_COLUMNS)
    conn.execute(text(
        f"INSERT INTO {target} (audience_key, subject, {columns}) "
        f"SELECT :key, f.subject, {staged} FROM ({firsts}) AS f "
        f"LEFT JOIN {target} t ON t.audience_key = :key AND t.subject = f.subject "
        f"WHERE t.subject IS NULL OR {differs} "
        f"ON CONFLICT (audience_key, subject) DO UPDATE SET {updates}"
    ), params)


@contextmanager
def scratch_members(conn: Connection) -> Iterator[Table]:
    """A private, temporary copy of the member table, for `syncd plan`.

    A TEMPORARY table lives in the connection's own session (PostgreSQL) or temp
    database (SQLite): writing it takes no lock a concurrent run could wait on, and
    nothing in the shared tables changes. Whatever was written is rolled back and
    the table dropped on the way out.
    """
    table = Table("syncd_plan_member", MetaData(),
                  *(Column(c.name, c.type, primary_key=c.primary_key) for c in M.columns),
                  prefixes=["TEMPORARY"])
    table.drop(conn, checkfirst=True)  # left over on a pooled connection
    table.create(conn)
    try:
        yield table
    finally:
        conn.rollback()  # PostgreSQL: the table goes with the transaction that created it
        table.drop(conn, checkfirst=True)  # SQLite: created outside it
        conn.commit()


def load_scratch(conn: Connection, scratch: Table, audience_key: str, rows: Iterable[SnapshotRow],
                 counts: SnapshotCounts) -> None:
    """An audience's snapshot into the scratch table, exactly as replace_members does into `member`."""
    _stage_into(conn, scratch, audience_key, rows, counts)


def member_count(conn: Connection, audience_key: str, members: Table = M) -> int:
    query = select(func.count()).select_from(members).where(members.c.audience_key == audience_key)
    return conn.scalar(query) or 0


# --- the diff --------------------------------------------------------------------------


def _is_member(audience_key: str | ColumnElement[str], members: Table = M) -> ColumnElement[bool]:
    return exists().where(members.c.audience_key == audience_key, members.c.subject == L.c.subject)


def _enter_condition() -> ColumnElement[bool]:
    # A member needs `true` unless the destination surely holds `true`.
    return or_(L.c.acked.is_(None), L.c.acked == false(), L.c.maybe_false == true())


def _leave_condition() -> ColumnElement[bool]:
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
        .where(L.c.audience_key == audience_key, L.c.destination == destination, _leave_condition(),
               not_(_is_member(audience_key, members)))
    )
    return union_all(enters, leaves)


@dataclass
class PlanCounts:
    members: int
    entered: int
    left: int
    skipped: int  # would enter, but the destination needs an email they lack
    failed: int  # of the work, how many were rejected last time
    retries: int = 0  # of the work, how many were attempted before and not acknowledged
    oldest_pending: datetime | None = None  # since when the oldest of those has been tried


def _count(conn: Connection, changes: Any, members: int) -> PlanCounts:
    c = changes.c
    enter, sendable = c.value == true(), c.sendable == true()
    row = conn.execute(select(
        _count_if(and_(enter, sendable)), _count_if(and_(enter, not_(sendable))), _count_if(not_(enter)),
        _count_if(and_(sendable, c.failed == true())), _count_if(and_(sendable, c.tried == true())),
        func.min(c.pending_since),
    ).select_from(changes)).one()
    entered, skipped, left, failed, retries = (int(n or 0) for n in row[:5])
    return PlanCounts(members, entered, left, skipped, failed, retries,
                      row[5] if isinstance(row[5], datetime) else None)


def _count_if(condition: ColumnElement[bool]) -> Any:
    return func.sum(case((condition, 1), else_=0))


def plan_counts(conn: Connection, audience_key: str, destination: str, needs_email: bool,
                members: Table = M) -> PlanCounts:
    """What a run would do for the pair now, counted without keeping the changes (status,
    metrics, approve): one pass over each side of the diff."""
    changes = _changes(audience_key, destination, needs_email, members).subquery()
    return _count(conn, changes, member_count(conn, audience_key, members))


WORK = Table(
    "syncd_work", MetaData(),
    Column("value", Boolean, primary_key=True), Column("subject", Text, primary_key=True),
    Column("ident", Text, primary_key=True),
    Column("sendable", Boolean, nullable=False), Column("failed", Boolean, nullable=False),
    Column("tried", Boolean, nullable=False), Column("pending_since", UTCDateTime()),
    prefixes=["TEMPORARY"],
)


class WorkList:
    """One pair's diff, computed once: `make()` puts every change into a temporary table
    private to `conn` (no lock, no WAL) and counts them; `page()` reads it back, 500 key
    lookups a page; `drop()` removes it. Computing the diff per page instead re-read the
    whole audience for every page; with 1% churn that was most of an incremental run.

    `make()` commits `conn` once the list is made and `page()` after each page, so no
    transaction stays open while changes are sent. As a context manager: make, then drop."""

    counts: PlanCounts

    def __init__(self, conn: Connection, audience_key: str, destination: str, needs_email: bool,
                 members: Table = M) -> None:
        self.conn, self.audience_key, self.destination = conn, audience_key, destination
        self.needs_email, self.members = needs_email, members

    def make(self) -> PlanCounts:
        conn = self.conn
        WORK.drop(conn, checkfirst=True)  # left over on a pooled connection
        WORK.create(conn)
        conn.execute(insert(WORK).from_select(
            ["subject", "ident", "value", "sendable", "failed", "tried", "pending_since"],
            _changes(self.audience_key, self.destination, self.needs_email, self.members)))
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"ANALYZE {WORK.name}")  # temporary tables get no statistics otherwise
        self.counts = _count(conn, WORK, member_count(conn, self.audience_key, self.members))
        conn.commit()
        return self.counts

    def drop(self) -> None:
        with suppress(SQLAlchemyError):  # an aborted transaction: its error matters, not this one
            WORK.drop(self.conn, checkfirst=True)
            self.conn.commit()  # a rollback would keep the table in a pooled PostgreSQL session

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
        last `Change.cursor`): enters (`value` true) that can be sent, or leaves; at most
        `limit`, with each user's data and messageId seq and nonce. An enter without a
        ledger row yet gets a new nonce here; mark_in_flight stores it with the row."""
        w = WORK.c
        ledger_row = and_(L.c.audience_key == self.audience_key, L.c.destination == self.destination,
                          L.c.ident == w.ident, L.c.subject == w.subject)
        cursor = (after, "") if isinstance(after, str) else after
        page = and_(w.value == value, tuple_(w.subject, w.ident) > tuple_(*cursor))
        order = (w.subject, w.ident)
        if value:
            m = self.members.c
            members = and_(m.audience_key == self.audience_key, m.subject == w.subject)
            enters = (
                select(m.subject, m.user_id, m.anonymous_id, m.email, m.url, m.traits, _change_seq(True),
                       w.ident, L.c.nonce)
                .select_from(WORK.join(self.members, members).outerjoin(L, ledger_row))
                .where(page, w.sendable == true())
            )
            rows = self._read(enters.order_by(*order).limit(limit))
            return [Enter(subject=r[0], user_id=r[1], anonymous_id=r[2], email=r[3], url=r[4],
                          traits=json.loads(r[5]) if r[5] else {}, seq=r[6], ident=r[7],
                          nonce=r[8] if r[8] is not None else new_nonce()) for r in rows]
        leaves = (
            select(L.c.subject, L.c.user_id, L.c.anonymous_id, L.c.email, _change_seq(False),
                   L.c.ident, L.c.nonce)
            .select_from(WORK.join(L, ledger_row))
            .where(page)
        )
        rows = self._read(leaves.order_by(*order).limit(limit))
        return [Leave(subject=r[0], user_id=r[1], anonymous_id=r[2], email=r[3], seq=r[4], ident=r[5],
                      nonce=r[6]) for r in rows]

    def leaves_left(self) -> int:
        """Leaves of the list the destination has still not acknowledged."""
        query = select(func.count()).select_from(WORK.join(L, and_(
            L.c.audience_key == self.audience_key, L.c.destination == self.destination,
            L.c.ident == WORK.c.ident, L.c.subject == WORK.c.subject,
        ))).where(WORK.c.value == false(), _leave_condition())
        return self.conn.scalar(query) or 0

    def _read(self, query: Any) -> list[Any]:
        """All rows, then the read transaction ends (sends must not hold one open)."""
        rows = list(self.conn.execute(query))
        self.conn.commit()
        return rows


def new_nonce() -> str:
    """A ledger row's random token (64 bits): two rows of one subject never share one."""
    return secrets.token_hex(8)


def _change_seq(value: bool) -> Any:
    """The number in a change's messageId. It moves on every acknowledgement, and also when
    this change replaces an outstanding one of the other value: that one may have landed
    (a crash, a timeout), and a destination deduplicating by messageId must not drop this
    one as a repeat of an older change with the same number."""
    replaces = and_(L.c.pending.is_not(None), L.c.pending == (false() if value else true()))
    return func.coalesce(L.c.seq, 0) + case((replaces, 1), else_=0)


# --- recording sends -------------------------------------------------------------------


def mark_in_flight(engine: Engine, audience_key: str, destination: str, changes: Sequence[Change]) -> None:
    """Written and committed before the requests leave: a crash now is visible later."""
    if not changes:
        return
    at = now()
    rows = [
        {"audience_key": audience_key, "destination": destination, "subject": c.subject,
         "ident": c.ident, "nonce": c.nonce, "user_id": c.user_id, "anonymous_id": c.anonymous_id,
         "email": c.email, "pending": c.value, "in_flight": c.value, "pending_since": at, "seq": c.seq}
        for c in changes
    ]
    with engine.begin() as conn:
        stmt = _upsert(conn, L)
        stmt = stmt.on_conflict_do_update(  # the nonce stays what the row was created with
            index_elements=[L.c.audience_key, L.c.destination, L.c.ident, L.c.subject],
            set_={
                "user_id": stmt.excluded.user_id,
                "anonymous_id": stmt.excluded.anonymous_id,
                "email": stmt.excluded.email,
                "pending": stmt.excluded.pending,
                "seq": stmt.excluded.seq,
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
    ident: str = ""  # the change's ledger row is (subject, ident)
    attempts: int = 0
    rejected: bool = False  # the destination refused this change (4xx): retried next run
    uncertain: bool = False  # it may have been applied (timeout after sending)
    status: int | None = None
    error: str | None = None


def _where_subject(audience_key: str, destination: str) -> ColumnElement[bool]:
    return and_(
        L.c.audience_key == audience_key,
        L.c.destination == destination,
        L.c.ident == bindparam("b_ident"),
        L.c.subject == bindparam("b_subject"),
    )


def record_outcomes(engine: Engine, audience_key: str, destination: str, outcomes: Sequence[Outcome]) -> None:
    at = now()
    acked = [{"b_subject": o.subject, "b_ident": o.ident, "b_value": o.value} for o in outcomes if o.acked]
    others = [
        {"b_subject": o.subject, "b_ident": o.ident, "b_attempts": o.attempts, "b_failed": o.rejected,
         "b_status": o.status, "b_error": (o.error or "")[:500] or None,
         "b_maybe_true": o.uncertain and o.value, "b_maybe_false": o.uncertain and not o.value}
        for o in outcomes if not o.acked and (o.attempts or o.rejected)
    ]
    untried = [{"b_subject": o.subject, "b_ident": o.ident} for o in outcomes
               if not o.acked and not o.attempts and not o.rejected]
    where = _where_subject(audience_key, destination)
    with engine.begin() as conn:
        _analyze_unknown_ledger(conn)
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


def _analyze_unknown_ledger(conn: Connection) -> None:
    """PostgreSQL without statistics on the ledger (a first send, before autovacuum has
    looked, or with autovacuum off) updates each row through the (audience, destination)
    index, reading every row of the pair: quadratic over an initial send. Once the ledger
    has been analysed with rows in it, estimates scale with its size on their own."""
    if conn.dialect.name != "postgresql":
        return
    reltuples = conn.scalar(text("SELECT reltuples FROM pg_class WHERE oid = 'ledger'::regclass"))
    if reltuples is not None and reltuples <= 0:
        conn.exec_driver_sql("ANALYZE ledger")


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


def adopt_idents(engine: Engine, pairs: Iterable[tuple[str, str]]) -> int:
    """Rows written before migration 0004 have ident "". At a destination keyed by email (the
    given (audience, destination) pairs) a row's ident is the email its values went to: set
    it, so those rows are the members' current rows, not strangers. One index range per
    pair (ident "" comes first in the key), so once adopted this costs nothing."""
    other = L.alias("other")
    adopted = 0
    with engine.begin() as conn:
        for audience_key, destination in pairs:
            taken = exists().where(other.c.audience_key == L.c.audience_key,
                                   other.c.destination == L.c.destination,
                                   other.c.ident == L.c.email, other.c.subject == L.c.subject)
            adopted += conn.execute(
                update(L).where(L.c.audience_key == audience_key, L.c.destination == destination,
                                L.c.ident == "", L.c.email.is_not(None), L.c.email != "", ~taken)
                .values(ident=L.c.email)
            ).rowcount or 0
    return adopted


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


def not_ok_since(conn: Connection) -> dict[tuple[str, str], datetime]:
    """Per (audience, destination) pair whose latest result is not `ok`: when the first run of
    that unbroken streak of not-`ok` results started (runs without the pair do not break it)."""
    last_ok = (
        select(RUN_RESULT.c.audience_key, RUN_RESULT.c.destination,
               func.max(RUN_RESULT.c.run_id).label("run_id"))
        .where(RUN_RESULT.c.outcome == "ok")
        .group_by(RUN_RESULT.c.audience_key, RUN_RESULT.c.destination)
        .subquery()
    )
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
    with engine.begin() as conn:
        pruned.ledger_rows = conn.execute(delete(L).where(_settled_false(before))).rowcount
    return pruned


def _latest_runs(conn: Connection) -> list[int]:
    """The latest run overall, of every audience and of every (audience, destination) pair."""
    queries = [
        select(func.max(RUN.c.id)),
        select(func.max(RUN_AUDIENCE.c.run_id)).group_by(RUN_AUDIENCE.c.audience_key),
        select(func.max(RUN_RESULT.c.run_id)).group_by(RUN_RESULT.c.audience_key,
                                                       RUN_RESULT.c.destination),
    ]
    return sorted({run_id for query in queries for run_id in conn.scalars(query) if run_id is not None})


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
    """Users the destination holds as `true`: at Nat a user whose email changed has a row per
    email, and counts once."""
    query = select(func.count(func.distinct(L.c.subject))).select_from(L).where(
        L.c.audience_key == audience_key, L.c.destination == destination, L.c.acked == true()
    )
    return conn.scalar(query) or 0


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


# --- operator commands (resync, failures, retry, history, approvals) ---------------------


def mark_resync(engine: Engine, audience_key: str, destination: str) -> int:
    """Make the next run send the pair's full state again; returns the rows marked.

    Users the destination holds as `true` are marked "may hold false": members get
    `true` again, non-members get `false` as any leave does. Members never
    acknowledged need no mark. The attribute check (User.com) is redone too.
    """
    with engine.begin() as conn:
        marked = conn.execute(
            update(L).where(L.c.audience_key == audience_key, L.c.destination == destination,
                            L.c.acked == true()).values(maybe_false=True)
        ).rowcount or 0
        conn.execute(delete(ATTRIBUTE).where(ATTRIBUTE.c.audience_key == audience_key,
                                             ATTRIBUTE.c.destination == destination))
    return marked


def _still_work(audience_key: str | ColumnElement[str]) -> ColumnElement[bool]:
    """A ledger row a run would still send: an enter for a member (at its current email, where
    the destination keys by email), a leave for a non-member."""
    return or_(and_(_current(), _enter_condition()),
               and_(not_(_is_member(audience_key)), _leave_condition()))


@dataclass
class FailureGroup:
    destination: str
    audience_key: str
    status: int | None
    reason: str
    count: int
    samples: list[str]


def failures(conn: Connection, destination: str | None = None, samples: int = 5) -> list[FailureGroup]:
    """Changes the destination rejected last time that are still to be sent, grouped by reason."""
    groups: dict[tuple[str, str, int | None, str], FailureGroup] = {}
    query = (
        select(L.c.destination, L.c.audience_key, L.c.last_status, L.c.last_error,
               func.coalesce(L.c.user_id, L.c.anonymous_id))
        .where(L.c.failed == true(), _still_work(L.c.audience_key))
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
    where = and_(L.c.failed == true(), _still_work(L.c.audience_key))
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


def recent_runs(conn: Connection, limit: int) -> list[Any]:
    """The last `limit` runs, newest first, with their pairs' totals summed."""
    totals = (
        select(RUN_RESULT.c.run_id,
               *(func.sum(RUN_RESULT.c[name]).label(name) for name in RUN_TOTALS),
               func.count().label("pairs"),
               func.sum(case((RUN_RESULT.c.outcome == "held", 1), else_=0)).label("held"))
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
    return list(conn.execute(query))


RUN_TOTALS = ("entered", "left", "sent", "acknowledged", "skipped", "failed", "pending")


def approval(conn: Connection, audience_key: str, destination: str) -> Any:
    return conn.execute(select(APPROVAL).where(APPROVAL.c.audience_key == audience_key,
                                               APPROVAL.c.destination == destination)).first()


def record_approval(engine: Engine, audience_key: str, destination: str, exits: int,
                    acknowledged: int, by: str) -> None:
    values = {"audience_key": audience_key, "destination": destination, "exits": exits,
              "acknowledged": acknowledged, "approved_at": now(), "approved_by": by}
    with engine.begin() as conn:
        stmt = _upsert(conn, APPROVAL)
        conn.execute(stmt.on_conflict_do_update(
            index_elements=[APPROVAL.c.audience_key, APPROVAL.c.destination],
            set_={k: stmt.excluded[k] for k in ("exits", "acknowledged", "approved_at", "approved_by")},
        ), values)


def drop_approval(engine: Engine, audience_key: str, destination: str) -> None:
    with engine.begin() as conn:
        conn.execute(delete(APPROVAL).where(APPROVAL.c.audience_key == audience_key,
                                            APPROVAL.c.destination == destination))
