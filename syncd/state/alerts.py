"""What the alert webhook was last told, per condition (table alert_state), and the claim that
lets one process tell a change of state while daemons share a ledger. run/alerts.py decides
the conditions and talks to the webhook; this is its SQL.

A condition is keyed by (event, audience, destination), "" where it has none."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, and_, or_, select, update

from syncd.model import RunOutcome
from syncd.state.engine import now, upsert
from syncd.state.tables import ALERT, RUN

AlertKey = tuple[str, str, str]  # (event, audience, destination)

CLAIM_TTL = timedelta(minutes=2)  # a claim left by a process that died lapses after this
# The run outcomes that say how delivery went (interrupted and crashed runs say nothing).
_DELIVERY_OUTCOMES = (RunOutcome.OK.value, RunOutcome.HELD.value, RunOutcome.UNDELIVERED.value)


def told(engine: Engine) -> dict[AlertKey, bool]:
    """Per condition, the state the webhook last acknowledged (active or not)."""
    with engine.begin() as conn:
        return {(r.event, r.audience, r.destination): r.active for r in conn.execute(select(ALERT))}


def _where(key: AlertKey) -> Any:
    event, audience, destination = key
    return and_(ALERT.c.event == event, ALERT.c.audience == audience, ALERT.c.destination == destination)


def claim(engine: Engine, key: AlertKey, active: bool, holder: str) -> bool:
    """Take the right to tell that the condition became `active` (or cleared); False if another
    process has it, or the webhook already knows."""
    event, audience, destination = key
    at = now()
    with engine.begin() as conn:
        conn.execute(upsert(conn, ALERT).values(event=event, audience=audience, destination=destination,
                                                active=False).on_conflict_do_nothing())
        claimed = conn.execute(
            update(ALERT)
            .where(_where(key), ALERT.c.active == (not active),
                   or_(ALERT.c.claimed_until.is_(None), ALERT.c.claimed_until < at))
            .values(claimed_by=holder, claimed_until=at + CLAIM_TTL)
        ).rowcount
    return bool(claimed == 1)


def settle(engine: Engine, key: AlertKey, active: bool, holder: str, acknowledged: bool) -> None:
    """Give the claim back; the state moves to `active` only if the webhook acknowledged it."""
    values: dict[str, Any] = {"claimed_by": None, "claimed_until": None}
    if acknowledged:
        values.update(active=active, changed_at=now())
    with engine.begin() as conn:
        conn.execute(update(ALERT).where(_where(key), ALERT.c.claimed_by == holder).values(**values))


def delivery_outcomes(engine: Engine, limit: int) -> list[str]:
    """The outcomes of the last `limit` runs that say how delivery went, newest first:
    interrupted and crashed runs neither count nor break a streak."""
    with engine.begin() as conn:
        return list(conn.scalars(select(RUN.c.outcome).where(RUN.c.outcome.in_(_DELIVERY_OUTCOMES))
                                 .order_by(RUN.c.id.desc()).limit(limit)))
