"""Learning a destination's ids in bulk (User.com: GET users/, cursor pages of up to 100, each
user with its id and custom id), so that users it already has, which is most members of a
first sync, go out in mass updates instead of one call each; only users it does not have are
created one by one.

A destination lists (`"listing"` in its class's bulk_paths) when more plain users of unknown
id wait than the listing costs (estimate.listing_pages: the pages, from the size its last
listing counted; never listed: the first page tells). After every page it asks again, so it
stops once the users left to find are fewer than the pages left. Each page goes through the
destination's sender, paced at its rate limit like every send, and is stored with the cursor
after it (state/listing.py). A listing cut short (a stop signal, max_send_time, a page failing
after the sender's retries) keeps what it learned and goes on from that cursor at the next run
that needs it; a cursor the destination no longer knows (404) restarts it from the first page.
A 401/403 stops the destination for the run, as any answer does. A complete listing records
the users it did not find, so they are no reason to list again."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Collection, Mapping
from functools import partial

from syncd.delivery.destinations.base import Listed
from syncd.delivery.session import Session
from syncd.delivery.wire import Verdict
from syncd.estimate import listing_pages
from syncd.model import Pace, Progress, Task
from syncd.render import plural
from syncd.state.listing import (
    ListingState,
    listing_state,
    mark_missing,
    record_page,
    restart_listing,
    work_subjects,
)
from syncd.state.work import DestinationWork

log = logging.getLogger("syncd")


async def learn_ids(session: Session, work: DestinationWork, held: Collection[str], progress: Progress,
                    deadline: float) -> None:
    """List the destination's users if it pays for the work of this run's pairs that are ready
    to send (`held`: audiences whose exits a guard holds, left out), keeping every id learned."""
    if "listing" not in session.destination.bulk_paths or session.sender.interrupted():
        return
    load = await session.workload(work, held, session.ready())
    pages = listing_pages(load, session.destination.listing_page_size, session.destination.bulk_size or 1)
    if pages is None:
        return
    with session.engine.connect() as conn:
        state = listing_state(conn, session.name)
    await Lister(session, work, load.plain_unknown, progress, deadline).run(state, pages)


class Lister:
    """One run's listing: page after page until it is done, stops paying, or is cut short."""

    def __init__(self, session: Session, work: DestinationWork, unknown: int, progress: Progress,
                 deadline: float) -> None:
        self.session, self.work, self.unknown = session, work, unknown  # unknown: plain users left to find
        self.destination, self.name = session.destination, session.name
        self.progress, self.deadline = progress, deadline
        self.size = self.destination.listing_page_size
        self.pages = 0  # listed in this run
        self.task: Task | None = None

    async def run(self, state: ListingState, pages: int) -> None:
        cursor, listed = state.cursor, state.listed if state.cursor else 0
        log.info("%s: listing %s's users to learn their ids: %s of unknown id wait, the listing "
                 "takes about %s%s", self.name, self.destination.integration, plural(self.unknown, "user"),
                 plural(pages, "page"),
                 f" (going on after {plural(listed, 'user')} listed before)" if cursor else "")
        try:
            reason = await self._pages(cursor, listed)
        finally:
            if self.task is not None:
                self.task.close()
        if reason is not None:
            log.warning("%s: the listing of %s's users stopped after %d pages this run (%s); the ids "
                        "learned are kept, and a later run goes on from there", self.name,
                        self.destination.integration, self.pages, reason)

    async def _pages(self, cursor: str | None, listed: int) -> str | None:
        """Page after page; why it stopped short (None: done, or no longer worth it)."""
        while True:
            stop = self._why_stop()
            if stop is not None:
                return stop
            result = await self.session.call(self.destination.list_users(cursor))
            if result.verdict is Verdict.REJECT and result.status == 404 and cursor is not None:
                log.warning("%s: the listing's saved cursor is no longer valid (HTTP 404): listing again "
                            "from the first page (the ids learned are kept)", self.name)
                restart_listing(self.session.engine, self.name)
                cursor, listed = None, 0
                continue
            if result.verdict is not Verdict.ACK:
                return f"listing users failed: {result.error or 'not attempted'}"
            try:
                page = self.destination.listed(result.body)
            except ValueError as exc:
                return f"listing users failed: {exc}"
            if page.cursor is not None and (not page.users or page.cursor == cursor):
                return f"{self.destination.integration} answered a page that does not move on"
            listed += page.users
            if not self._learn(page, listed, first=cursor is None):
                return None
            cursor = page.cursor

    def _why_stop(self) -> str | None:
        if self.session.sender.interrupted():
            return self.session.sender.stopped or "stopped by signal"
        if time.monotonic() >= self.deadline:
            return "the run reached its send time limit ([schedule] max_send_time)"
        return None

    def _learn(self, page: Listed, listed: int, first: bool) -> bool:
        """Store one page (its ids, and the cursor after it); whether to list on."""
        in_work, newly_known = self.work.on_connection(
            partial(work_subjects, destination=self.name, custom_ids=page.ids))
        self.unknown -= len(newly_known)
        pages_left = math.ceil(max(0, page.total - listed) / self.size)
        record_page(self.session.engine, self.name, by_subject(page.ids, in_work), users=page.total,
                    listed=listed, cursor=page.cursor, first=first, finished=page.cursor is None)
        self.pages += 1
        self._advance(pages_left)
        if page.cursor is None:
            missing = self.work.on_connection(partial(mark_missing, destination=self.name))
            log.info("%s: listed all %d users of %s; %d users of this run are not there: they are "
                     "created one by one", self.name, page.total, self.destination.integration, missing)
            return False
        if self.unknown <= pages_left:  # each user left to find costs one call: fewer than the pages
            log.info("%s: %d users of unknown id left to find, %d pages left to list: not worth listing "
                     "on (a later run may)", self.name, self.unknown, pages_left)
            return False
        return True

    def _advance(self, pages_left: int) -> None:
        if self.task is None:  # the first page tells how many there are
            self.task = self.progress.task(f"{self.name}: id listing", self.pages + pages_left, "pages",
                                           Pace(self.session.sender.rate_limit, self.deadline))
        self.task.advance()


def by_subject(ids: Mapping[str, int], in_work: Collection[str]) -> dict[str, int]:
    """Custom id -> id, as subject -> id: the destination keys a user by its user_id, else its
    anonymous_id, so a custom id is the subject "u:<id>" unless only "a:<id>" is in the work
    lists (users not in them, kept for later runs, as the usual "u:<id>")."""
    found: dict[str, int] = {}
    for custom_id, remote_id in ids.items():
        subjects = [s for s in (f"u:{custom_id}", f"a:{custom_id}") if s in in_work] or [f"u:{custom_id}"]
        found.update(dict.fromkeys(subjects, remote_id))
    return found
