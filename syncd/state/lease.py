"""The run lease: one run at a time per state database, across processes and hosts; the
keeper thread renews it while a run lasts and stops the run if it was lost."""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Engine,
    delete,
    select,
    update,
)
from sqlalchemy.exc import SQLAlchemyError

from syncd.errors import RunInProgress
from syncd.render import database_error, readable
from syncd.state.engine import now, upsert
from syncd.state.tables import (
    LEASE,
)

log = logging.getLogger("syncd")


@dataclass(frozen=True)
class LeaseHandle:
    name: str
    holder: str
    ttl: timedelta


LEASE_TTL = timedelta(minutes=5)
RUN_LEASE = "run"  # the lease every run takes


def acquire_lease(engine: Engine, name: str = RUN_LEASE, ttl: timedelta = LEASE_TTL) -> LeaseHandle:
    host, pid = socket.gethostname(), os.getpid()
    holder = f"{host}:{pid}:{uuid.uuid4().hex[:8]}"
    at = now()
    values = {"name": name, "holder": holder, "host": host, "pid": pid,
              "acquired_at": at, "expires_at": at + ttl}
    with engine.begin() as conn:
        conn.execute(upsert(conn, LEASE).on_conflict_do_nothing(), values)
        current = conn.execute(select(LEASE).where(LEASE.c.name == name)).one()
        if current.holder != holder:
            if not _is_stale(current, host, at):
                since = readable(current.acquired_at)
                raise RunInProgress(
                    f"another run is in progress (pid {current.pid} on {current.host}, "
                    f"since {since}); its lease expires at "
                    f"{current.expires_at.strftime('%H:%M:%SZ')}"
                )
            taken = conn.execute(
                update(LEASE).where(LEASE.c.name == name, LEASE.c.holder == current.holder)
                .values(**values)
            ).rowcount
            if taken != 1:
                raise RunInProgress("another run took the lease at the same moment")
    return LeaseHandle(name, holder, ttl)


def _is_stale(current: Any, host: str, at: datetime) -> bool:
    if current.expires_at <= at:
        return True
    return bool(current.host == host and not _pid_alive(current.pid))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def renew_lease(engine: Engine, lease: LeaseHandle) -> bool:
    """Extend our lease; False if it is no longer ours (it expired and was taken over)."""
    with engine.begin() as conn:
        result = conn.execute(
            update(LEASE).where(LEASE.c.name == lease.name, LEASE.c.holder == lease.holder)
            .values(expires_at=now() + lease.ttl)
        )
        return result.rowcount == 1


def release_lease(engine: Engine, lease: LeaseHandle) -> None:
    with engine.begin() as conn:
        conn.execute(delete(LEASE).where(LEASE.c.name == lease.name, LEASE.c.holder == lease.holder))


class LeaseKeeper(threading.Thread):
    """Renews the run lease while the run lasts; if it was lost (taken over after it
    expired), stops the run, so two processes never deliver the same changes at once."""

    def __init__(self, engine: Engine, lease: LeaseHandle, stop: threading.Event | None) -> None:
        super().__init__(name="syncd-lease", daemon=True)
        self.engine, self.lease, self.stop = engine, lease, stop
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.lease.ttl.total_seconds() / 5):
            try:
                if not renew_lease(self.engine, self.lease):
                    log.error("lost the run lease (another process took it over): stopping this run")
                    if self.stop is not None:
                        self.stop.set()
                    return
            except SQLAlchemyError as exc:  # keep trying: the lease outlives a short outage
                log.warning("could not renew the run lease: %s", database_error(exc))

    def finish(self) -> None:
        self.done.set()
        self.join()
