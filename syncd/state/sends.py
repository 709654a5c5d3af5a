"""Recording sends: mark changes in flight, record each outcome (the acknowledged value
moves only after a 2xx), recover in-flight rows after a crash, identity adoption,
ensured attributes."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

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
        stmt = upsert(conn, L)
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
        stmt = upsert(conn, ATTRIBUTE).on_conflict_do_nothing()
        conn.execute(stmt, {"destination": destination, "audience_key": audience_key, "ensured_at": now()})


def forget_attribute(engine: Engine, destination: str, audience_key: str) -> None:
    """The attribute is no longer as syncd made it (another type at User.com): every run
    checks it again until a person fixes it."""
    with engine.begin() as conn:
        conn.execute(delete(ATTRIBUTE).where(ATTRIBUTE.c.destination == destination,
                                             ATTRIBUTE.c.audience_key == audience_key))
