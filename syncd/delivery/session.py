"""One destination's sending in one run, as its jobs share it: pairs.py pages each pair's
work list, calls.py sends grouped calls, bulk.py mass updates. The Session holds what they
have in common (the destination, its sender, each pair's state, the calls made, the ids
learned) and turns answers into each change's outcome, recorded for its own pair: marked in
flight before a request leaves, recorded after (the acknowledged value moves only on a 2xx)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import TypeVar

from sqlalchemy import Engine

from syncd.delivery.destinations import Destination
from syncd.delivery.sender import Sender
from syncd.delivery.wire import Request, Result, Verdict
from syncd.errors import DestinationConflict
from syncd.estimate import Workload
from syncd.guards import GuardVerdict
from syncd.model import Change, PairReport, Task, who
from syncd.state.remote_ids import learn_ids
from syncd.state.sends import Outcome, mark_in_flight, record_outcomes
from syncd.state.work import DestinationWork, WorkList
from syncd.state.workload import count_work

T = TypeVar("T")


@dataclass
class Pair:
    """One (audience, destination) pair of a run: its work list, guard, report, progress."""

    work: WorkList
    guard: GuardVerdict
    report: PairReport
    task: Task | None = None
    ready: bool = False  # set up at the destination: its changes may be sent
    # Per value, changes bulk.py holds back for a fuller mass update, with their remote ids:
    # taken from the list, not yet marked in flight.
    held_back: dict[bool, list[tuple[Change, int]]] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.work.audience_key

    @property
    def total(self) -> int:
        """The pair's changes (at Nat a leaving user may have several: one per email)."""
        return self.work.counts.changes


class Session:
    def __init__(self, destination: Destination, sender: Sender, engine: Engine,
                 snapshot_at: datetime) -> None:
        self.destination, self.sender, self.engine = destination, sender, engine
        self.name, self.snapshot_at = destination.name, snapshot_at
        self.pairs: dict[str, Pair] = {}
        self.calls = 0  # calls sent (each carries one or more changes; a mass update many)
        self.calls_task: Task | None = None  # the destination's calls, for the ETA
        self.learned: dict[str, int] = {}  # subject -> the destination's id, not yet stored
        # Per audience, how often its setup (User.com's attribute) was checked again this run
        # (bulk.py), one check at a time: chunks refused together trigger one check.
        self.rechecks: dict[str, int] = {}
        self.recheck_lock = asyncio.Lock()
        # Audiences whose setup conflicts with the destination's (an attribute of another
        # type): nothing of theirs is sent; each run checks again, and the alerts tell.
        self.conflicts: dict[str, DestinationConflict] = {}

    async def call(self, request: Request) -> Result:
        """One request through the sender, counted as a call if it left."""
        result = await self.sender.call(request)
        if result.attempts:
            self.calls += 1
            if self.calls_task is not None:
                self.calls_task.advance()
        return result

    async def workload(self, work: DestinationWork, held: Collection[str],
                       audiences: Collection[str] | None = None) -> Workload:
        """The destination's work lists counted the ways its calls group them (in a thread: at
        an initial send they are as large as the audiences); `held`: audiences whose exits a
        guard holds; `audiences`: only these."""
        count = partial(count_work, destination=self.name, held=held, audiences=audiences)
        return await in_thread(partial(work.on_connection, count))

    def ready(self) -> list[str]:
        """The audiences set up at the destination (their changes may be sent)."""
        return [key for key, pair in self.pairs.items() if pair.ready]

    def mark(self, key: str, changes: Sequence[Change]) -> None:
        mark_in_flight(self.engine, key, self.name, changes)

    async def record(self, key: str, outcomes: Sequence[Outcome]) -> None:
        """The outcomes on the ledger, in a thread (the event loop goes on meanwhile), and in
        the pair's report."""
        try:
            await in_thread(partial(record_outcomes, self.engine, key, self.name, outcomes))
        except asyncio.CancelledError:  # in_thread waited for the write all the same
            _tally(self.pairs[key].report, outcomes)
            raise
        _tally(self.pairs[key].report, outcomes)

    def advance(self, key: str, n: int = 1) -> None:
        task = self.pairs[key].task
        if task is not None:
            task.advance(n)

    def learn(self, subject: str, result: Result) -> None:
        """Keep the destination's id for the user from its answer (stored with the next page)."""
        remote_id = self.destination.remote_id(result.body) if result.verdict is Verdict.ACK else None
        if remote_id is not None:
            self.learned[subject] = remote_id

    def store_ids(self) -> None:
        learned, self.learned = self.learned, {}
        learn_ids(self.engine, self.name, learned)


def outcome_of(change: Change, result: Result) -> Outcome:
    """A change's outcome from the answer to the request that carried it."""
    return Outcome(
        subject=change.subject, value=change.value, ident=change.ident,
        acked=result.verdict is Verdict.ACK,
        attempts=result.attempts, rejected=result.verdict is Verdict.REJECT,
        uncertain=result.uncertain, status=result.status, error=result.error,
    )


def by_audience(items: Iterable[tuple[str, T]]) -> dict[str, list[T]]:
    grouped: dict[str, list[T]] = {}
    for key, item in items:
        grouped.setdefault(key, []).append(item)
    return grouped


def _tally(pair: PairReport, outcomes: Sequence[Outcome]) -> None:
    for outcome in outcomes:
        pair.sent += outcome.attempts > 0
        pair.acknowledged += outcome.acked
        pair.failed += outcome.rejected
        if not outcome.acked and outcome.error and pair.message is None:
            pair.message = f"{who(outcome.subject)}: {outcome.error}" if outcome.rejected else outcome.error


async def in_thread(call: Callable[[], T]) -> T:
    """`call()` in a worker thread while the event loop goes on (other destinations' requests
    are answered meanwhile). If the caller is cancelled meanwhile, the thread is waited for:
    it may be using a connection the caller's cleanup is about to use too."""
    future = asyncio.get_running_loop().run_in_executor(None, call)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        with suppress(Exception):
            await future
        raise
