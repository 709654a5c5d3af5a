"""Delivery of one destination's work: page through each pair's WorkList, identify, send,
record each outcome in the ledger; guards, the send time limit and the report's counters."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from datetime import datetime
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy import Engine

from syncd import guards
from syncd.config import AudienceConfig, Config, DestinationConfig, GuardConfig
from syncd.delivery.destinations import make_destination
from syncd.delivery.destinations.base import Destination
from syncd.delivery.sender import Result, Sender, Verdict
from syncd.errors import DestinationError
from syncd.identify import MAX_MESSAGE_BYTES, identify, size_of
from syncd.model import Change, PairOutcome, Task
from syncd.run.report import PairReport, RunReport
from syncd.state.diff import WorkList
from syncd.state.operator import drop_approval
from syncd.state.remote_ids import forget_ids, known_ids, learn_ids
from syncd.state.sends import Outcome, attribute_ensured, mark_in_flight, record_attribute, record_outcomes

if TYPE_CHECKING:
    from syncd.run.pipeline import Options

log = logging.getLogger("syncd")
T = TypeVar("T")

PAGE_SIZE = 500
PAIRS_AT_ONCE = 4  # audiences one destination sends at the same time (each holds a connection)


async def deliver_all(config: Config, options: Options, engine: Engine, report: RunReport,
                       audiences: Sequence[AudienceConfig], deadline: float) -> list[PairReport]:
    deliveries = []
    for dest in config.destinations.values():
        connected = [a for a in audiences if dest.name in a.destinations]
        if connected:
            deliveries.append((Delivery(dest, options, engine, report.snapshot_at, config.guards,
                                         config.path, deadline), connected))
    results = await asyncio.gather(*(delivery.run(connected) for delivery, connected in deliveries))
    report.out_of_time = any(delivery.out_of_time for delivery, _ in deliveries)
    return [pair for pairs in results for pair in pairs]


class Delivery:
    """Delivers every audience connected to one destination, page by page; up to
    PAIRS_AT_ONCE audiences at once, sharing the destination's pace and concurrency, so a
    big initial send does not hold up the other audiences' increments."""

    def __init__(self, config: DestinationConfig, options: Options, engine: Engine,
                 snapshot_at: datetime, guard_config: GuardConfig, config_path: str,
                 deadline: float) -> None:
        self.destination: Destination = make_destination(config)
        self.name = config.name
        self.engine, self.snapshot_at, self.progress = engine, snapshot_at, options.progress
        self.guard_config, self.config_path = guard_config, config_path
        self.deadline, self.out_of_time = deadline, False
        self.learned: dict[str, int] = {}  # subject -> the destination's id, not yet stored
        latency = options.latency
        self.sender = Sender(
            name=self.destination.integration, headers=self.destination.headers(),
            concurrency=config.concurrency, rate_limit=config.rate_limit, timeout=config.timeout,
            policy=options.policy, stop_event=options.stop_event, secrets=self.destination.secrets(),
            transport=options.transport() if options.transport else None,
            on_latency=(lambda seconds: latency(config.name, seconds)) if latency else None,
        )

    async def run(self, audiences: Sequence[AudienceConfig]) -> list[PairReport]:
        slots = asyncio.Semaphore(PAIRS_AT_ONCE)

        async def in_turn(audience: AudienceConfig) -> PairReport:
            async with slots:
                return await self._pair(audience)

        tasks = [asyncio.create_task(in_turn(audience)) for audience in audiences]
        try:
            pairs = list(await asyncio.gather(*tasks))
            self._store_ids()
            return pairs
        except BaseException:  # one pair failed: stop the others at their next await
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        finally:
            await self.sender.aclose()

    async def _pair(self, audience: AudienceConfig) -> PairReport:
        with self.engine.connect() as conn:  # holds the pair's work list until the pair is done
            work = WorkList(conn, audience.key, self.name, self.destination.needs_email)
            try:
                # A run's biggest query, in a thread: requests the other pairs have in flight
                # are answered meanwhile instead of timing out behind a blocked event loop.
                counts = await _in_thread(work.make)
                guard = guards.check(conn, audience, self.guard_config, self.name, counts.members,
                                     counts.left)
                conn.commit()
                pair = await self._send_work(work, guard)
                # An approval lasts until no exit of the pair is left to send.
                if guard.approved_exits is not None and not guard.held and not work.leaves_left():
                    drop_approval(self.engine, audience.key, self.name)
            finally:
                work.drop()
        return pair

    async def _send_work(self, work: WorkList, guard: guards.GuardVerdict) -> PairReport:
        key, counts = work.audience_key, work.counts
        pair = PairReport(key, self.name, members=counts.members, entered=counts.entered,
                          left=counts.left, skipped=counts.skipped)
        self._log_guard(guard)
        total = counts.entered + counts.left
        if total and not self.sender.interrupted():
            task = self.progress.task(f"{self.name}: {key}", total, "delivered")
            try:
                await self._prepare(key)
                await self._send_all(work, pair, task, leaves=not guard.held)
            except DestinationError as exc:
                pair.message = str(exc)
            finally:
                task.close()
        pair.pending = total - pair.acknowledged
        if pair.pending and guard.held and not self.sender.refused:
            pair.outcome, pair.message = PairOutcome.HELD, guard.hold_message(self.config_path)
        elif pair.pending:
            pair.outcome = PairOutcome.STOPPED if self.sender.refused else PairOutcome.UNDELIVERED
            pair.message = self.sender.stopped or pair.message or _interrupted(self.sender) or (
                f"the run reached its send time limit ([schedule] max_send_time); {pair.pending} "
                "changes wait for the next run" if self.out_of_time else None)
        return pair

    def _out_of_time(self) -> bool:
        """Asked only with work left: past the run's send time limit? (Remembered for the report.)"""
        if time.monotonic() >= self.deadline:
            self.out_of_time = True
        return self.out_of_time

    def _log_guard(self, guard: guards.GuardVerdict) -> None:
        if guard.held:
            log.error("%s", guard.hold_message(self.config_path))
        elif guard.approved:
            log.warning("sending %d exits of %s at %s, approved by %s: %s", guard.exits,
                        guard.audience_key, self.name, guard.approved_by or "?", guard.reason())

    async def _prepare(self, key: str) -> None:
        with self.engine.connect() as conn:
            if attribute_ensured(conn, self.name, key):
                return
        await self.destination.prepare(self.sender, key)
        record_attribute(self.engine, self.name, key)

    async def _send_all(self, work: WorkList, pair: PairReport, task: Task,
                        leaves: bool = True) -> None:
        """Every change of the work list: the enters, then (unless held) the leaves. Past the
        send time limit no new page starts, but every pair sends its first page in every run:
        audiences waiting for a turn behind long initial sends still move, and so does a run
        whose snapshots took longer than the limit."""
        key, first = work.audience_key, True
        for value in (True, False) if leaves else (True,):
            after: tuple[str, str] | str = ""
            while not self.sender.interrupted():
                page = work.page(value, after, PAGE_SIZE)
                if not page or (not first and self._out_of_time()):
                    break
                first = False
                after = page[-1].cursor
                done, page = await self._send_in_bulk(key, value, page, task)
                _tally(pair, done)
                mark_in_flight(self.engine, key, self.name, page)
                outcomes = await asyncio.gather(*(self._send(key, change, task) for change in page))
                record_outcomes(self.engine, key, self.name, outcomes)
                _tally(pair, outcomes)

    async def _send(self, key: str, change: Change, task: Task) -> Outcome:
        try:
            return await self._send_one(key, change)
        finally:
            task.advance()

    async def _send_one(self, key: str, change: Change) -> Outcome:
        message = identify(change, key, self.name, self.destination.integration, self.snapshot_at)
        size = size_of(message)
        if size > MAX_MESSAGE_BYTES:
            return Outcome(change.subject, change.value, ident=change.ident, rejected=True,
                           error=f"message is {size} bytes, over the 32 KB limit: not sent")
        result = await self.sender.call(self.destination.request(message, key))
        self._learn(change.subject, result)
        return Outcome(
            subject=change.subject, value=change.value, ident=change.ident,
            acked=result.verdict is Verdict.ACK,
            attempts=result.attempts, rejected=result.verdict is Verdict.REJECT,
            uncertain=result.uncertain, status=result.status, error=result.error,
        )

    async def _send_in_bulk(self, key: str, value: bool, changes: Sequence[Change],
                            task: Task) -> tuple[list[Outcome], list[Change]]:
        """Mass updates (User.com): of a page of one audience and one value, the users whose id
        the destination gave us and who have nothing else to send (an enter's extra traits
        need a call of the user's own; leaves carry none) go in chunks of `bulk_size`, one
        request each. Marked in flight before the chunks leave and recorded after, like any
        page. Returns their outcomes, and the rest of the page for the per-change path."""
        size = self.destination.config.bulk_size
        if not size or not changes or self.sender.interrupted():
            return [], list(changes)
        self._store_ids()  # ids learned from the previous pages' answers
        ids = known_ids(self.engine, self.name, (c.subject for c in changes if not c.traits))
        bulk = [c for c in changes if c.subject in ids and not c.traits]
        if not bulk:
            return [], list(changes)
        mark_in_flight(self.engine, key, self.name, bulk)
        chunks = [bulk[start:start + size] for start in range(0, len(bulk), size)]
        sent = await asyncio.gather(*(self._send_chunk(key, value, chunk, ids, task) for chunk in chunks))
        outcomes = [outcome for chunk in sent for outcome in chunk]
        record_outcomes(self.engine, key, self.name, outcomes)
        return outcomes, [c for c in changes if c.subject not in ids or c.traits]

    async def _send_chunk(self, key: str, value: bool, chunk: Sequence[Change], ids: dict[str, int],
                          task: Task) -> list[Outcome]:
        """One mass update; its 2xx acknowledges every change of the chunk, a transient failure
        leaves each as one failed call would. A refusal (4xx: e.g. a user deleted at User.com,
        whose id no longer exists there) falls back to one call per user, whose answers teach
        the ids again (and re-create a deleted user)."""
        request = self.destination.mass_update(key, value, [ids[c.subject] for c in chunk])
        result = await self.sender.call(request)
        if result.verdict is not Verdict.REJECT:
            task.advance(len(chunk))
            return [_outcome_of(change, result) for change in chunk]
        log.warning("%s refused a mass update of %d users of %s (%s): sending them one by one",
                    self.name, len(chunk), key, result.error)
        forget_ids(self.engine, self.name, [c.subject for c in chunk])
        return list(await asyncio.gather(*(self._send(key, change, task) for change in chunk)))

    def _learn(self, subject: str, result: Result) -> None:
        """Keep the destination's id for the user from its answer (stored with the next page)."""
        remote_id = self.destination.remote_id(result.body) if result.verdict is Verdict.ACK else None
        if remote_id is not None:
            self.learned[subject] = remote_id

    def _store_ids(self) -> None:
        learned, self.learned = self.learned, {}
        learn_ids(self.engine, self.name, learned)


def _outcome_of(change: Change, result: Result) -> Outcome:
    """A change's outcome from the answer to the request that carried it."""
    return Outcome(
        subject=change.subject, value=change.value, ident=change.ident,
        acked=result.verdict is Verdict.ACK,
        attempts=result.attempts, rejected=result.verdict is Verdict.REJECT,
        uncertain=result.uncertain, status=result.status, error=result.error,
    )


async def _in_thread(call: Callable[[], T]) -> T:
    """`call()` in a worker thread while the event loop goes on. If the caller is cancelled
    meanwhile, the thread is waited for: it may be using a connection the caller's cleanup
    is about to use too."""
    future = asyncio.get_running_loop().run_in_executor(None, call)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        with suppress(Exception):
            await future
        raise


def _tally(pair: PairReport, outcomes: Sequence[Outcome]) -> None:
    for outcome in outcomes:
        pair.sent += outcome.attempts > 0
        pair.acknowledged += outcome.acked
        pair.failed += outcome.rejected
        if not outcome.acked and outcome.error and pair.message is None:
            pair.message = f"{outcome.subject}: {outcome.error}" if outcome.rejected else outcome.error


def _interrupted(sender: Sender) -> str | None:
    if sender.stop_event is not None and sender.stop_event.is_set():
        return "stopped by signal; the rest waits for the next run"
    return None
