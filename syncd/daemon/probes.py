"""What `/healthz` and `/readyz` answer: is the daemon alive, is its state database usable.

Liveness is the scheduler's own pulse: a tiny job ticks every `PULSE` seconds on the
scheduler's executor, so a scheduler whose loop died or wedged stops ticking even though
it still says it is running. The systemd watchdog and `/healthz` ask the same question.

Readiness connects to the state database and compares its alembic revision with the
newest one this syncd ships (a newer one: another machine on the shared ledger was
upgraded and migrated it); the answer is cached for a few seconds, so a probe every
second costs one query every few seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from syncd.render import database_error
from syncd.state.schema import versions

PULSE = 15.0  # seconds between the scheduler's ticks
STALE_AFTER = 4 * PULSE  # no tick for this long: the scheduler is wedged
READY_TTL = 5.0  # seconds a readiness answer is reused

T = TypeVar("T")


class Liveness:
    """Alive while the scheduler ticked within `stale_after` seconds (monotonic clock)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, stale_after: float = STALE_AFTER) -> None:
        self.clock, self.stale_after = clock, stale_after
        self.last_tick: float | None = None

    def tick(self) -> None:
        self.last_tick = self.clock()

    def __call__(self) -> bool:
        return self.last_tick is not None and self.clock() - self.last_tick < self.stale_after


class Cached(Generic[T]):
    """`compute()`'s answer, reused for `ttl` seconds; one computation at a time."""

    def __init__(self, compute: Callable[[], T], ttl: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.compute, self.ttl, self.clock = compute, ttl, clock
        self.lock = threading.Lock()
        self.value: T | None = None
        self.at: float | None = None

    def __call__(self) -> T:
        with self.lock:  # a burst of probes waits for one answer instead of piling up queries
            if self.at is None or self.clock() - self.at >= self.ttl or self.value is None:
                self.value, self.at = self.compute(), self.clock()
            return self.value


def readiness(engine: Engine) -> Callable[[], str]:
    """'' when the state database answers and is at syncd's newest revision, else why not (one line)."""

    def check() -> str:
        try:
            found = versions(engine)
        except SQLAlchemyError as exc:
            return f"state database unreachable: {database_error(exc, 200)}"
        if found.newer:
            return found.newer_problem()
        if found.current != found.head:
            return (f"state database not migrated: at revision {found.current or 'none'}, this syncd "
                    f"needs {found.head}: run `syncd migrate`")
        return ""

    return Cached(check, READY_TTL)

