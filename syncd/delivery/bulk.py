"""Mass updates (User.com): users whose id the destination gave us go in chunks of
`bulk_size`, one request per chunk, instead of one call each. A chunk the destination
refuses for its users (an id it no longer has) falls back to one call per user, whose answers
teach the ids again; a chunk refused for the audience's attribute (deleted, or changed to
another type in the dashboard) has the attribute checked again: re-created if missing, then
resent in bulk; of another type, the pair fails (DestinationConflict) in every run until a
person fixes it, never falling back to one call per user."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from syncd.delivery import calls
from syncd.delivery.calls import Call
from syncd.delivery.session import Pair, Session, outcome_of
from syncd.delivery.wire import Result, Verdict
from syncd.errors import DestinationConflict, DestinationError
from syncd.model import Change
from syncd.state.remote_ids import forget_ids, known_ids
from syncd.state.sends import Outcome, forget_attribute, record_attribute

log = logging.getLogger("syncd")


async def send_in_bulk(session: Session, pair: Pair, value: bool, changes: Sequence[Change]) -> list[Change]:
    """Of a page of one audience and one value, the users whose id the destination gave us
    and who have nothing else to send (an enter's extra traits need a call of the user's own;
    leaves carry none) go in chunks of `bulk_size`, without riders (their other audiences'
    changes go by chunk in those audiences' own pages). A last chunk that is not full waits
    for the next page's (`flush` sends it after the pair's last page), so a first sync where
    most users are known takes as few mass updates as its known users fill. Returns the rest
    of the page, for the per-user calls; raises DestinationError when the pair cannot go on."""
    size = session.destination.bulk_size
    if not size or not changes or session.sender.interrupted():
        return list(changes)
    session.store_ids()  # ids learned from the previous pages' answers
    ids = known_ids(session.engine, session.name, (c.subject for c in changes if not c.traits))
    waiting = pair.held_back.pop(value, [])
    bulk = waiting + [(c, ids[c.subject]) for c in changes if c.subject in ids and not c.traits]
    full = len(bulk) - len(bulk) % size
    bulk, pair.held_back[value] = bulk[:full], bulk[full:]
    await _send(session, pair, value, bulk, size)
    return [c for c in changes if c.subject not in ids or c.traits]


async def flush(session: Session, pair: Pair, value: bool) -> None:
    """The chunk held back for a fuller one, after the pair's last page of `value`. Not sent
    when the run stops: those changes were never marked in flight, the next run sends them."""
    waiting = pair.held_back.pop(value, [])
    size = session.destination.bulk_size
    if waiting and size and not session.sender.interrupted():
        await _send(session, pair, value, waiting, size)


async def _send(session: Session, pair: Pair, value: bool, bulk: Sequence[tuple[Change, int]],
                size: int) -> None:
    """Chunks of `size`: marked in flight before they leave and recorded after, like any page."""
    if not bulk:
        return
    session.mark(pair.key, [change for change, _ in bulk])
    chunks = [bulk[start:start + size] for start in range(0, len(bulk), size)]
    sent = await asyncio.gather(*(_send_chunk(session, pair, value, chunk) for chunk in chunks))
    await session.record(pair.key, [outcome for outcomes, _ in sent for outcome in outcomes])
    problem = next((problem for _, problem in sent if problem is not None), None)
    if problem is not None:
        raise problem


async def _send_chunk(session: Session, pair: Pair, value: bool,
                      chunk: Sequence[tuple[Change, int]]) -> tuple[list[Outcome], DestinationError | None]:
    """One mass update; its 2xx acknowledges every change of the chunk, a transient failure
    leaves each as one failed call would. Refused for the attribute: checked again, then sent
    again (or the pair's problem returned beside the outcomes). Refused for its users (4xx:
    e.g. a user deleted at User.com, whose id no longer exists there): one call per user,
    whose answers teach the ids again (and re-create a deleted user)."""
    request = session.destination.mass_update(pair.key, value, [remote_id for _, remote_id in chunk])
    changes = [change for change, _ in chunk]
    checked = session.rechecks.get(pair.key, 0)
    result = await session.call(request)
    if _blames_attribute(session, result):
        try:
            await _recheck(session, pair, checked)
        except DestinationError as exc:
            session.advance(pair.key, len(changes))
            return [outcome_of(change, result) for change in changes], exc
        result = await session.call(request)
    if result.verdict is not Verdict.REJECT:
        session.advance(pair.key, len(changes))
        return [outcome_of(change, result) for change in changes], None
    log.warning("%s refused a mass update of %d users of %s (%s): sending them one by one",
                session.name, len(changes), pair.key, result.error)
    forget_ids(session.engine, session.name, [c.subject for c in changes])
    answers = await asyncio.gather(*(calls.send(session, Call(pair.key, change)) for change in changes))
    return [outcome for answer in answers for _, outcome in answer], None


def _blames_attribute(session: Session, result: Result) -> bool:
    return result.verdict is Verdict.REJECT and session.destination.blames_attribute(result.body)


async def _recheck(session: Session, pair: Pair, checked: int) -> None:
    """The audience's setup made again (User.com: the attribute checked, re-created as boolean
    if it is gone), once for all the chunks refused before it was: `checked` is how many
    checks the refused chunk had seen. Of another type: the pair stops for this run, and the
    attribute is checked again in every run until it is fixed."""
    async with session.recheck_lock:
        if pair.key in session.conflicts:
            raise DestinationConflict(str(session.conflicts[pair.key]))
        if session.rechecks.get(pair.key, 0) != checked:
            return  # another refused chunk had it checked meanwhile
        session.rechecks[pair.key] = checked + 1
        log.warning("%s refused a mass update of %s for its attribute: checking it again",
                    session.name, pair.key)
        try:
            await session.destination.check_again(session.sender, pair.key)
        except DestinationConflict as exc:
            session.conflicts[pair.key] = exc
            pair.ready = False  # no other page takes its changes along either
            forget_attribute(session.engine, session.name, pair.key)  # checked first in every run
            raise
        record_attribute(session.engine, session.name, pair.key)
