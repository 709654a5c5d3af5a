"""A destination's listing of its users (delivery/listing.py; User.com's GET users/): the ids
it teaches, how many users the destination had when last counted, and where a listing cut
short goes on.

Each page is one transaction: its ids and the cursor after it are stored together, so a
listing killed between two pages keeps everything it learned and goes on from the next page.
A complete listing also records the users of the destination's work lists it did not find
(remote_id rows without an id): they are no reason to list again."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import BigInteger, Connection, Engine, cast, exists, insert, literal, null, select, update

from syncd.state.engine import now, upsert
from syncd.state.remote_ids import store_ids
from syncd.state.tables import LISTING, REMOTE_ID
from syncd.state.work import WORK


@dataclass(frozen=True)
class ListingState:
    users: int | None = None  # the destination's users as the last first page counted them
    listed: int = 0  # users the listing in progress has gone through
    cursor: str | None = None  # where it goes on; None: no listing in progress
    finished_at: datetime | None = None  # when a listing last went through every user

    @property
    def left(self) -> int | None:
        """Users the listing in progress has still to go through (None: none in progress)."""
        if self.cursor is None or self.users is None:
            return None
        return max(0, self.users - self.listed)


def listing_state(conn: Connection, destination: str) -> ListingState:
    c = LISTING.c
    row = conn.execute(select(c.users, c.listed, c.cursor, c.finished_at)
                       .where(c.destination == destination)).first()
    return ListingState(*row) if row is not None else ListingState()


def record_page(engine: Engine, destination: str, ids: Mapping[str, int], *, users: int, listed: int,
                cursor: str | None, first: bool = False, finished: bool = False) -> None:
    """One page of a listing: the ids it taught (subject -> id) and where the listing stands
    after it (`cursor` None: it ends here, complete if `finished`), in one transaction."""
    at = now()
    values: dict[str, object] = {"users": users, "listed": listed, "cursor": cursor}
    if first:
        values["started_at"] = at
    if finished:
        values["finished_at"] = at
    with engine.begin() as conn:
        store_ids(conn, destination, ids)
        stmt = upsert(conn, LISTING).values(destination=destination, **values)
        conn.execute(stmt.on_conflict_do_update(index_elements=[LISTING.c.destination], set_=values))


def restart_listing(engine: Engine, destination: str) -> None:
    """The saved cursor is no longer valid (expired, unknown): the next page is the first."""
    with engine.begin() as conn:
        conn.execute(update(LISTING).where(LISTING.c.destination == destination)
                     .values(cursor=None, listed=0))


def work_subjects(conn: Connection, destination: str, custom_ids: Iterable[str]) -> tuple[set[str], set[str]]:
    """Of the subjects these custom ids can be ("u:<id>", else "a:<id>": the destination keys a
    user by its user_id, else its anonymous_id), those in the destination's work lists, and
    of those, the ones whose id is not known yet (no remote_id row). On the work lists'
    connection (WORK is private to it); not committed here."""
    candidates = sorted({f"{prefix}:{cid}" for cid in custom_ids for prefix in ("u", "a")})
    if not candidates:
        return set(), set()
    r = REMOTE_ID.c
    known = exists().where(r.destination == destination, r.subject == WORK.c.subject)
    rows = conn.execute(select(WORK.c.subject, known).where(WORK.c.subject.in_(candidates)).distinct())
    found = {subject: bool(is_known) for subject, is_known in rows}
    return set(found), {subject for subject, is_known in found.items() if not is_known}


def mark_missing(conn: Connection, destination: str) -> int:
    """After a complete listing: the work lists' users it did not find get a remote_id row
    without an id (an answer of theirs later gives it). On the work lists' connection; not
    committed here. Returns how many."""
    r = REMOTE_ID.c
    at = literal(now(), type_=r.learned_at.type)
    unknown = (select(literal(destination), WORK.c.subject, cast(null(), BigInteger), at)
               .where(~exists().where(r.destination == destination, r.subject == WORK.c.subject))
               .distinct())
    result = conn.execute(insert(REMOTE_ID).from_select(["destination", "subject", "remote_id", "learned_at"],
                                                        unknown))
    return result.rowcount or 0
