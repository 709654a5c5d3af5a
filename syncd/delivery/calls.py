"""Grouped calls: a page's changes go out one call per user, and each call carries the same
user's changes of the destination's other audiences too (riders), so a user whose audiences
changed together gets one Identify. Each change carried gets the call's outcome, recorded for
its own pair."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from syncd.delivery.session import Pair, Session, by_audience, outcome_of
from syncd.identify import MAX_MESSAGE_BYTES, identify, size_of
from syncd.model import Change
from syncd.state.sends import Outcome


@dataclass(frozen=True)
class Call:
    """One call to the destination: a change of the page's audience `key`, and the same
    user's changes of other audiences riding along, as (audience key, change)."""

    key: str
    change: Change
    riders: tuple[tuple[str, Change], ...] = ()

    def carried(self) -> list[tuple[str, Change]]:
        return [(self.key, self.change), *self.riders]


async def send_page(session: Session, grouped: Sequence[Call]) -> None:
    """A page's grouped calls (`calls_of`), each change's outcome recorded for its own pair."""
    answers = await asyncio.gather(*(send(session, call) for call in grouped))
    for key, outcomes in by_audience(o for answer in answers for o in answer).items():
        await session.record(key, outcomes)


def calls_of(session: Session, pair: Pair, page: Sequence[Change]) -> list[Call]:
    """The page's changes as calls, each with its riders from the other ready audiences (not
    the exits a guard holds), every change carried marked in flight (before anything leaves)."""
    held = [key for key, other in session.pairs.items() if other.guard.held]
    ready = [key for key, other in session.pairs.items() if other.ready]
    calls = grouped(pair.key, page, pair.work.riders(page, ready, enters_only=held))
    for key, changes in by_audience(c for call in calls for c in call.carried()).items():
        session.mark(key, changes)
    return calls


def grouped(key: str, page: Sequence[Change], riders: Sequence[tuple[str, Change]]) -> list[Call]:
    """The page's changes as calls, one per user (subject and ident), with its riders."""
    by_user: dict[tuple[str, str], list[tuple[str, Change]]] = {}
    for rider in riders:
        by_user.setdefault(rider[1].cursor, []).append(rider)
    return [Call(key, change, tuple(by_user.get(change.cursor, ()))) for change in page]


async def send(session: Session, call: Call) -> list[tuple[str, Outcome]]:
    """One user's call; the same outcome for every change it carries, as (audience, outcome)."""
    try:
        return await _send(session, call)
    finally:
        for key, _ in call.carried():
            session.advance(key)


async def _send(session: Session, call: Call) -> list[tuple[str, Outcome]]:
    destination, change = session.destination, call.change
    message = identify_of(session, call)
    size = size_of(message)
    if size > MAX_MESSAGE_BYTES:
        error = f"message is {size} bytes, over the 32 KB limit: not sent"
        return [(key, Outcome(c.subject, c.value, ident=c.ident, rejected=True, error=error))
                for key, c in call.carried()]
    result = await session.call(destination.request(message, call.key))
    session.learn(change.subject, result)
    return [(key, outcome_of(c, result)) for key, c in call.carried()]


def identify_of(session: Session, call: Call) -> dict[str, Any]:
    """The call's Identify (SPEC 4), all its changes in one."""
    return identify(call.change, call.key, session.name, session.destination.integration,
                    session.snapshot_at, call.riders)
