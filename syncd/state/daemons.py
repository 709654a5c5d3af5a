"""The `syncd run` daemons using this state database and when each starts its next run (table
daemon): the scheduler writes it (daemon/scheduler.py), `status` and the page read it
(state/readings.py), whatever process they run in."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, delete, select, update

from syncd.state.engine import now, upsert
from syncd.state.tables import DAEMON

BEAT = timedelta(minutes=1)  # how often a daemon says it is alive
GONE_AFTER = 3 * BEAT  # a daemon not seen for this long is gone (killed, its host down)


@dataclass(frozen=True)
class DaemonRecord:
    """A row of `daemon`."""

    holder: str
    host: str
    pid: int
    started_at: datetime
    next_run_at: datetime | None
    seen_at: datetime


def holder() -> str:
    """This process's name in the table."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def beat(engine: Engine, name: str, next_run_at: datetime | None) -> None:
    """This daemon (`name`: this process's `holder()`) is alive and starts its next run at
    `next_run_at` (None: none scheduled)."""
    at = now()
    with engine.begin() as conn:
        updated = conn.execute(update(DAEMON).where(DAEMON.c.holder == name)
                               .values(next_run_at=next_run_at, seen_at=at)).rowcount
        if updated != 1:  # the first beat (or the row was deleted meanwhile): this process's row
            conn.execute(upsert(conn, DAEMON).on_conflict_do_nothing(), {
                "holder": name, "host": socket.gethostname(), "pid": os.getpid(), "started_at": at,
                "next_run_at": next_run_at, "seen_at": at})


def gone(engine: Engine, name: str) -> None:
    """A clean stop: the daemon schedules nothing any more."""
    with engine.begin() as conn:
        conn.execute(delete(DAEMON).where(DAEMON.c.holder == name))


def alive(conn: Connection, at: datetime) -> list[DaemonRecord]:
    """The daemons seen lately, the one with the earliest next run first."""
    rows = conn.execute(select(DAEMON).where(DAEMON.c.seen_at > at - GONE_AFTER)).all()
    records = [DaemonRecord(**row._mapping) for row in rows]
    return sorted(records, key=lambda d: (d.next_run_at is None, d.next_run_at or at, d.holder))
