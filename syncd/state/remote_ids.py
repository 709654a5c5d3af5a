"""A destination's own id per user (User.com's internal `id`), learned from its answers or
from a listing of its users (state/listing.py): a user whose id is known can go in a mass
update instead of one call of its own. A row without an id says the user was missing from
the destination's last complete listing (it is then no reason to list again).

An id is only a shortcut, never the truth: a mass update naming an id the destination no
longer has is refused as a whole (4xx), the chunk falls back to one call per user, and those
answers teach the ids again. So the ids of such a chunk are forgotten first."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from sqlalchemy import Connection, Engine, delete, select

from syncd.state.engine import now, upsert
from syncd.state.tables import REMOTE_ID

# Subjects per lookup: well under SQLite's bound-parameter limit.
_LOOKUP = 500


def known_ids(engine: Engine, destination: str, subjects: Iterable[str]) -> dict[str, int]:
    """subject -> the destination's id, for the subjects whose id has been learned."""
    wanted = list(dict.fromkeys(subjects))
    found: dict[str, int] = {}
    r = REMOTE_ID.c
    with engine.begin() as conn:
        for start in range(0, len(wanted), _LOOKUP):
            chunk = wanted[start:start + _LOOKUP]
            rows = conn.execute(select(r.subject, r.remote_id).where(
                r.destination == destination, r.subject.in_(chunk), r.remote_id.is_not(None)))
            found.update({subject: int(remote_id) for subject, remote_id in rows})
    return found


def learn_ids(engine: Engine, destination: str, ids: Mapping[str, int]) -> None:
    """Remember (or correct) the ids the destination gave for these subjects."""
    if ids:
        with engine.begin() as conn:
            store_ids(conn, destination, ids)


def store_ids(conn: Connection, destination: str, ids: Mapping[str, int]) -> None:
    """learn_ids on the caller's connection (its transaction: not committed here)."""
    if not ids:
        return
    at = now()
    rows = [{"destination": destination, "subject": subject, "remote_id": remote_id, "learned_at": at}
            for subject, remote_id in sorted(ids.items())]  # sorted: concurrent writers never deadlock
    stmt = upsert(conn, REMOTE_ID)
    stmt = stmt.on_conflict_do_update(
        index_elements=[REMOTE_ID.c.destination, REMOTE_ID.c.subject],
        set_={"remote_id": stmt.excluded.remote_id, "learned_at": stmt.excluded.learned_at},
    )
    conn.execute(stmt, rows)


def forget_ids(engine: Engine, destination: str, subjects: Iterable[str]) -> None:
    """The destination refused a mass update naming these users' ids: until an answer teaches
    them again, they go one by one."""
    wanted = sorted(set(subjects))
    r = REMOTE_ID.c
    with engine.begin() as conn:
        for start in range(0, len(wanted), _LOOKUP):
            conn.execute(delete(REMOTE_ID).where(r.destination == destination,
                                                 r.subject.in_(wanted[start:start + _LOOKUP])))
