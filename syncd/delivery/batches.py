"""Batches (Segment-compatible receivers): a page's changes, grouped one call per user as
for Nat (calls.py), become events (the destination's `events()`: the user's Identify, and
Engage's Track per audience change), packed into calls of at most `batch_size` events and
`max_call_bytes`. A 2xx acknowledges every event of the call. A call the receiver refuses as a whole
(400, 413) is split in halves until the bad event is failed alone and the rest delivered:
O(log batch) calls. A user whose events hold one over `max_event_bytes` is failed with the reason, none
of its events sent. A change is acknowledged when every event carrying it is."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime

from syncd.delivery import calls
from syncd.delivery.destinations.base import Event
from syncd.delivery.session import Session, by_audience, outcome_of
from syncd.delivery.wire import Result, Verdict
from syncd.model import Change
from syncd.render import iso_millis

SPLIT = (400, 413)  # the receiver refused the call for what it holds: narrow it down
CALL_OVERHEAD = 64  # {"batch":[...],"sentAt":"2026-12-05T04:00:00.000Z"} around the events


async def send(session: Session, grouped: Sequence[calls.Call]) -> None:
    """A page's grouped calls (calls.calls_of: riders taken, every change marked in flight) as
    events in batches, each change's outcome recorded for its own pair."""
    destination = session.destination
    limit = destination.max_event_bytes
    results: dict[tuple[str, str, str], list[Result]] = {}
    events: list[Event] = []
    for call in grouped:
        made = destination.events(calls.identify_of(session, call), call.carried())
        too_big = next((event.size for event in made if event.size > limit), None)
        if too_big is not None:
            refused = Result(Verdict.REJECT, error=f"an event of {too_big} bytes is over the limit of "
                                                   f"{limit} bytes: not sent")
            for key, change in call.carried():
                results.setdefault(_id(key, change), []).append(refused)
            continue
        events += made
    packed = _packed(events, destination.batch_size, destination.max_call_bytes)
    sent = await asyncio.gather(*(_send(session, batch) for batch in packed))
    for event, result in (item for batch in sent for item in batch):
        for key, change in event.carried:
            results.setdefault(_id(key, change), []).append(result)
    outcomes = [(key, outcome_of(change, _combined(results[_id(key, change)])))
                for call in grouped for key, change in call.carried()]
    for key, done in by_audience(outcomes).items():
        session.advance(key, len(done))
        await session.record(key, done)


def _id(key: str, change: Change) -> tuple[str, str, str]:
    return key, change.subject, change.ident


def _packed(events: Sequence[Event], batch_size: int, max_bytes: int) -> Iterator[list[Event]]:
    """Calls in order, each at most `batch_size` events and `max_bytes`."""
    batch: list[Event] = []
    size = CALL_OVERHEAD
    for event in events:
        if batch and (len(batch) == batch_size or size + event.size + 1 > max_bytes):
            yield batch
            batch, size = [], CALL_OVERHEAD
        batch.append(event)
        size += event.size + 1
    if batch:
        yield batch


async def _send(session: Session, batch: list[Event]) -> list[tuple[Event, Result]]:
    """One call; refused as a whole (400/413), its halves, each narrowed down the same way."""
    request = session.destination.batch([event.raw for event in batch], iso_millis(datetime.now(UTC)))
    result = await session.call(request)
    if result.verdict is Verdict.REJECT and result.status in SPLIT and len(batch) > 1:
        half = len(batch) // 2
        halves = await asyncio.gather(_send(session, batch[:half]), _send(session, batch[half:]))
        return halves[0] + halves[1]
    return [(event, result) for event in batch]


def _combined(results: Sequence[Result]) -> Result:
    """A change's result from those of the events carrying it: acknowledged if all were; else
    refused if one was, else not delivered, and possibly applied when some event went."""
    if len(results) == 1:  # most changes ride one event (the user's Identify)
        return results[0]
    failed = [result for result in results if result.verdict is not Verdict.ACK]
    if not failed:
        return results[0]
    worst = next((result for result in failed if result.verdict is Verdict.REJECT), failed[0])
    return replace(worst, uncertain=worst.uncertain or len(failed) < len(results))

