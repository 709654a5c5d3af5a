"""Mass updates (User.com): users whose id the destination gave us go in chunks of
`bulk_size`, one request per chunk, instead of one call each. A chunk the destination
refuses falls back to one call per user, whose answers teach the ids again."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from syncd.delivery import calls
from syncd.delivery.calls import Call
from syncd.delivery.session import Pair, Session, outcome_of
from syncd.delivery.wire import Verdict
from syncd.model import Change
from syncd.state.remote_ids import forget_ids, known_ids
from syncd.state.sends import Outcome

log = logging.getLogger("syncd")


async def send_in_bulk(session: Session, pair: Pair, value: bool, changes: Sequence[Change]) -> list[Change]:
    """Of a page of one audience and one value, the users whose id the destination gave us
    and who have nothing else to send (an enter's extra traits need a call of the user's own;
    leaves carry none) go in chunks of `bulk_size`, without riders (their other audiences'
    changes go by chunk in those audiences' own pages). Marked in flight before the chunks
    leave and recorded after, like any page. Returns the rest of the page, for the per-user
    calls."""
    size = session.destination.bulk_size
    if not size or not changes or session.sender.interrupted():
        return list(changes)
    session.store_ids()  # ids learned from the previous pages' answers
    ids = known_ids(session.engine, session.name, (c.subject for c in changes if not c.traits))
    bulk = [c for c in changes if c.subject in ids and not c.traits]
    if not bulk:
        return list(changes)
    session.mark(pair.key, bulk)
    chunks = [bulk[start:start + size] for start in range(0, len(bulk), size)]
    sent = await asyncio.gather(*(_send_chunk(session, pair, value, chunk, ids) for chunk in chunks))
    session.record(pair.key, [outcome for chunk in sent for outcome in chunk])
    return [c for c in changes if c.subject not in ids or c.traits]


async def _send_chunk(session: Session, pair: Pair, value: bool, chunk: Sequence[Change],
                      ids: dict[str, int]) -> list[Outcome]:
    """One mass update; its 2xx acknowledges every change of the chunk, a transient failure
    leaves each as one failed call would. A refusal (4xx: e.g. a user deleted at User.com,
    whose id no longer exists there) falls back to one call per user, whose answers teach
    the ids again (and re-create a deleted user)."""
    request = session.destination.mass_update(pair.key, value, [ids[c.subject] for c in chunk])
    result = await session.call(request)
    if result.verdict is not Verdict.REJECT:
        session.advance(pair.key, len(chunk))
        return [outcome_of(change, result) for change in chunk]
    log.warning("%s refused a mass update of %d users of %s (%s): sending them one by one",
                session.name, len(chunk), pair.key, result.error)
    forget_ids(session.engine, session.name, [c.subject for c in chunk])
    answers = await asyncio.gather(*(calls.send(session, Call(pair.key, change)) for change in chunk))
    return [outcome for answer in answers for _, outcome in answer]
