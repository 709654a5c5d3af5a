"""Recording sends: mark changes in flight, record each outcome (the acknowledged value
moves only after a 2xx), recover in-flight rows after a crash, identity adoption,
ensured attributes."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    and_,
    bindparam,
    delete,
    exists,
    false,
    literal,
    or_,
    select,
    text,
    true,
    update,
)

from syncd.model import Change
from syncd.state.engine import now, upsert
from syncd.state.tables import (
    ATTRIBUTE,
    L,
)


def mark_in_flight(engine: Engine, audience_key: str, destination: str, changes: Sequence[Change]) -> None:
    """Written and committed before the requests leave: a crash now is visible later. A new
    row takes the change's nonce; an existing row keeps its own, and the time it has been
    pending since. One change per row (of a row given twice, the last)."""
    if not changes:
        return
    latest = {c.cursor: c for c in changes}.values()  # an upsert may not write a row twice
    rows = [(c.subject, c.ident, c.nonce, c.user_id, c.anonymous_id, c.email, c.value, c.seq) for c in latest]
    with engine.begin() as conn:
        at = L.c.pending_since.type.bind_processor(conn.dialect)(now())
        _by_rows(conn, _MARK, (audience_key, destination, at), _MARK_TYPES, rows)


# Every column is written, as the Ledger model's defaults would fill them (raw SQL gets none).
# The WHERE makes SQLite read ON CONFLICT as the upsert's rather than as a join's ON.
_MARK = (
    "INSERT INTO ledger (audience_key, destination, pending_since, subject, ident, nonce, user_id, "
    "anonymous_id, email, pending, in_flight, seq, acked, maybe_true, maybe_false, attempts, failed) "
    "SELECT ?, ?, ?, column1, column2, column3, column4, column5, column6, column7, column7, column8, "
    "NULL, false, false, 0, false FROM ({rows}) AS v WHERE true "
    "ON CONFLICT (audience_key, destination, ident, subject) DO UPDATE SET "
    "user_id = excluded.user_id, anonymous_id = excluded.anonymous_id, email = excluded.email, "
    "pending = excluded.pending, seq = excluded.seq, in_flight = excluded.in_flight, "
    "pending_since = COALESCE(ledger.pending_since, excluded.pending_since)"
)
_MARK_TYPES = ("text",) * 6 + ("boolean", "integer")


class Outcome(NamedTuple):
    """What became of one change in this run (a tuple: one is made per change sent, and a
    frozen dataclass took 3x as long to make)."""

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
    """Each change's outcome on its ledger row (one outcome per row). Acknowledged: the value
    the destination holds moves on, in one statement per value for the whole page. Otherwise
    the attempts, the reason and what may have been applied are kept for the next run (row
    by row: they are few)."""
    acked = {value: [(audience_key, destination, o.ident, o.subject) for o in outcomes
                     if o.acked and o.value == value] for value in (True, False)}
    untried = [(audience_key, destination, o.ident, o.subject) for o in outcomes
               if not o.acked and not o.attempts and not o.rejected]
    others = [
        {"b_subject": o.subject, "b_ident": o.ident, "b_attempts": o.attempts, "b_failed": o.rejected,
         "b_status": o.status, "b_error": (o.error or "")[:500] or None,
         "b_maybe_true": o.uncertain and o.value, "b_maybe_false": o.uncertain and not o.value}
        for o in outcomes if not o.acked and (o.attempts or o.rejected)
    ]
    with engine.begin() as conn:
        _analyze_unknown_ledger(conn)
        if untried:
            _by_rows(conn, _UNTRIED, (), _KEY_TYPES, untried)
        at = L.c.acked_at.type.bind_processor(conn.dialect)(now())
        for value, keys in acked.items():
            if keys:
                _by_rows(conn, _ACKED, (value, at), _KEY_TYPES, keys)
        if others:
            conn.execute(
                update(L).where(_where_subject(audience_key, destination)).values(
                    in_flight=None, attempts=L.c.attempts + bindparam("b_attempts"),
                    failed=bindparam("b_failed"), last_status=bindparam("b_status"),
                    last_error=bindparam("b_error"),
                    maybe_true=or_(L.c.maybe_true, bindparam("b_maybe_true")),
                    maybe_false=or_(L.c.maybe_false, bindparam("b_maybe_false")),
                ),
                others,
            )


# The ledger rows whose whole key is among the given rows, each found in the primary key.
# The pair is in every row rather than in the WHERE: PostgreSQL, whose statistics of the
# ledger may predate the pair's rows (a destination added beside a big one, autovacuum not
# there yet), would otherwise read all the pair's rows for every statement; SQLite does for
# `IN (VALUES …)` without the subquery.
_KEYS = ("(audience_key, destination, ident, subject) IN "
         "(SELECT column1, column2, column3, column4 FROM ({rows}) AS v)")
_KEY_TYPES = ("text",) * 4
_UNTRIED = f"UPDATE ledger SET in_flight = NULL WHERE {_KEYS}"
_ACKED = (
    "UPDATE ledger SET acked = ?, seq = seq + 1, acked_at = ?, pending = NULL, in_flight = NULL, "
    "maybe_true = false, maybe_false = false, attempts = 0, failed = false, last_status = NULL, "
    f"last_error = NULL, pending_since = NULL WHERE {_KEYS}"
)
_MAX_PARAMETERS = 999  # in one SQLite statement, before SQLite 3.32


def _by_rows(conn: Connection, sql: str, fixed: Sequence[Any], types: Sequence[str],
             rows: Sequence[tuple[Any, ...]]) -> None:
    """`sql` over many rows at once: `{rows}` in it becomes a query of `rows` (columns
    column1, column2, … of SQL `types`), each `?` one of the `fixed` parameters, in order.
    Statement by statement instead (executemany) cost ~20 µs a row on SQLite, mostly in
    SQLAlchemy's handling of each row's parameters, and ~50 µs on PostgreSQL.

    PostgreSQL gets one array per column, unnested (`%b`: psycopg 3 sends them binary): a
    short statement that psycopg parses once (a long VALUES list it parses again every
    time) and the server prepares. SQLite gets VALUES lists, as many rows in each as its
    parameters allow."""
    if conn.dialect.name == "postgresql":
        arrays = ", ".join(f"CAST(%b AS {kind}[])" for kind in types)
        columns = ", ".join(f"column{n}" for n in range(1, len(types) + 1))
        query = f"SELECT * FROM unnest({arrays}) AS u({columns})"
        by_column = [list(column) for column in zip(*rows, strict=True)]
        conn.exec_driver_sql(sql.replace("?", "%s").format(rows=query), (*fixed, *by_column))
        return
    size = (_MAX_PARAMETERS - len(fixed)) // len(types)
    one = "(" + ", ".join("?" * len(types)) + ")"
    for start in range(0, len(rows), size):
        chunk = rows[start:start + size]
        query = "VALUES " + ", ".join([one] * len(chunk))
        conn.exec_driver_sql(sql.format(rows=query), (*fixed, *(value for row in chunk for value in row)))


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
        stmt = upsert(conn, ATTRIBUTE).on_conflict_do_nothing()
        conn.execute(stmt, {"destination": destination, "audience_key": audience_key, "ensured_at": now()})


def forget_attribute(engine: Engine, destination: str, audience_key: str) -> None:
    """The attribute is no longer as syncd made it (another type at User.com): every run
    checks it again until a person fixes it."""
    with engine.begin() as conn:
        conn.execute(delete(ATTRIBUTE).where(ATTRIBUTE.c.destination == destination,
                                             ATTRIBUTE.c.audience_key == audience_key))
