"""Delivery of one destination's work: page through each pair's WorkList, identify, send,
record each outcome in the ledger; guards, the send time limit and the report's counters.

A page goes out as calls, one per user: page -> `_calls` (the user's changes of the other
audiences ride along) -> `_send_call` each -> an outcome per change carried, recorded for
its own pair. Fairness stays per pair: each pages its own list; a rider is only taken."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy import Connection, Engine

from syncd import guards
from syncd.config import AudienceConfig, Config, DestinationConfig, GuardConfig
from syncd.delivery.destinations import make_destination
from syncd.delivery.destinations.base import Destination
from syncd.delivery.sender import Result, Sender, Verdict
from syncd.errors import DestinationError
from syncd.identify import MAX_MESSAGE_BYTES, identify, size_of
from syncd.model import Change, PairOutcome, Task
from syncd.run.report import PairReport, RunReport
from syncd.state.diff import WorkList, create_work, drop_work
from syncd.state.operator import drop_approval
from syncd.state.remote_ids import forget_ids, known_ids, learn_ids
from syncd.state.sends import Outcome, attribute_ensured, mark_in_flight, record_attribute, record_outcomes

if TYPE_CHECKING:
    from syncd.run.pipeline import Options

log = logging.getLogger("syncd")
T = TypeVar("T")

PAGE_SIZE = 500
PAIRS_AT_ONCE = 4  # audiences one destination sends at the same time (one connection holds their lists)


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
    report.calls = {delivery.name: delivery.calls for delivery, _ in deliveries}
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
        self.pairs: dict[str, _Pair] = {}
        self.calls = 0  # calls sent (each carries one or more changes; a mass update many)
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
        # One connection holds every pair's work list, in one table: a page of one pair can
        # then take the same users' changes of the other pairs along (one call per user).
        with self.engine.connect() as conn:
            create_work(conn)
            pairs: list[_Pair] = []
            try:
                for audience in audiences:
                    pairs.append(await self._make(conn, audience))
                await self._prepare_all(pairs)
                await self._send_pairs(pairs)
                return [self._finish(pair) for pair in pairs]
            finally:
                for pair in pairs:
                    if pair.task is not None:
                        pair.task.close()
                drop_work(conn)
                await self.sender.aclose()

    async def _make(self, conn: Connection, audience: AudienceConfig) -> _Pair:
        work = WorkList(conn, audience.key, self.name, self.destination.needs_email)
        # A run's biggest query, in a thread: requests the other destinations have in flight
        # are answered meanwhile instead of timing out behind a blocked event loop.
        counts = await _in_thread(partial(work.make, fresh=False))
        guard = guards.check(conn, audience, self.guard_config, self.name, counts.members, counts.left)
        conn.commit()
        self._log_guard(guard)
        report = PairReport(audience.key, self.name, members=counts.members, entered=counts.entered,
                            left=counts.left, skipped=counts.skipped)
        return _Pair(work, guard, report)

    async def _prepare_all(self, pairs: Sequence[_Pair]) -> None:
        """Each pair with work gets its progress task, and its destination set up (User.com's
        attribute) before any page is sent: another pair's page may carry its changes."""
        for pair in pairs:
            if not pair.total or self.sender.interrupted():
                continue
            pair.task = self.progress.task(f"{self.name}: {pair.key}", pair.total, "delivered")
            try:
                await self._prepare(pair.key)
                pair.ready = True
            except DestinationError as exc:
                pair.report.message = str(exc)
        self.pairs = {pair.key: pair for pair in pairs}

    async def _send_pairs(self, pairs: Sequence[_Pair]) -> None:
        slots = asyncio.Semaphore(PAIRS_AT_ONCE)

        async def in_turn(pair: _Pair) -> None:
            async with slots:
                try:
                    await self._send_all(pair)
                except DestinationError as exc:
                    pair.report.message = str(exc)

        tasks = [asyncio.create_task(in_turn(pair)) for pair in pairs if pair.ready]
        try:
            await asyncio.gather(*tasks)
            self._store_ids()
        except BaseException:  # one pair failed: stop the others at their next await
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    def _finish(self, pair: _Pair) -> PairReport:
        """The pair's outcome, once every pair is done (its changes may have gone out in
        another pair's calls)."""
        report, guard = pair.report, pair.guard
        report.pending = pair.total - report.acknowledged
        if report.pending and guard.held and not self.sender.refused:
            report.outcome, report.message = PairOutcome.HELD, guard.hold_message(self.config_path)
        elif report.pending:
            report.outcome = PairOutcome.STOPPED if self.sender.refused else PairOutcome.UNDELIVERED
            report.message = self.sender.stopped or report.message or _interrupted(self.sender) or (
                f"the run reached its send time limit ([schedule] max_send_time); {report.pending} "
                "changes wait for the next run" if self.out_of_time else None)
        # An approval lasts until no exit of the pair is left to send.
        if guard.approved_exits is not None and not guard.held and not pair.work.leaves_left():
            drop_approval(self.engine, pair.key, self.name)
        return report

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

    async def _send_all(self, pair: _Pair) -> None:
        """Every change of the pair's work list not taken by another pair's page: the
        enters, then (unless held) the leaves. Past the send time limit no new page starts,
        but every pair sends its first page in every run: audiences waiting for a turn
        behind long initial sends still move, and so does a run whose snapshots took longer
        than the limit."""
        first = True
        for value in (True, False) if not pair.guard.held else (True,):
            after: tuple[str, str] | str = ""
            while not self.sender.interrupted():
                page = pair.work.page(value, after, PAGE_SIZE)
                if not page or (not first and self._out_of_time()):
                    break
                first = False
                after = page[-1].cursor
                await self._send_page(pair, value, page)

    async def _send_page(self, pair: _Pair, value: bool, page: Sequence[Change]) -> None:
        """One page of `pair`: users the destination can update in bulk go by chunk first
        (User.com, known ids); each other user's call carries the user's changes of the other
        ready audiences too (not the exits a guard holds). Every change carried is marked in
        flight before, and its outcome recorded after, for its own pair."""
        page = await self._send_in_bulk(pair, value, page)
        if not page:
            return
        held = [key for key, other in self.pairs.items() if other.guard.held]
        ready = [key for key, other in self.pairs.items() if other.ready]
        riders = pair.work.riders(page, ready, enters_only=held)
        calls = _calls(pair.key, page, riders)
        for key, changes in _by_audience(c for call in calls for c in call.carried()).items():
            mark_in_flight(self.engine, key, self.name, changes)
        answers = await asyncio.gather(*(self._send(call) for call in calls))
        outcomes = [outcome for answer in answers for outcome in answer]
        for key, keyed in _by_audience(outcomes).items():
            record_outcomes(self.engine, key, self.name, keyed)
            _tally(self.pairs[key].report, keyed)

    async def _send(self, call: Call) -> list[tuple[str, Outcome]]:
        try:
            return await self._send_call(call)
        finally:
            for key, _ in call.carried():
                task = self.pairs[key].task
                if task is not None:
                    task.advance()

    async def _send_call(self, call: Call) -> list[tuple[str, Outcome]]:
        """One user's call; the same outcome for every change it carries."""
        change = call.change
        message = identify(change, call.key, self.name, self.destination.integration, self.snapshot_at,
                           call.riders)
        size = size_of(message)
        if size > MAX_MESSAGE_BYTES:
            error = f"message is {size} bytes, over the 32 KB limit: not sent"
            return [(key, Outcome(c.subject, c.value, ident=c.ident, rejected=True, error=error))
                    for key, c in call.carried()]
        result = await self.sender.call(self.destination.request(message, call.key))
        self.calls += result.attempts > 0
        self._learn(change.subject, result)
        return [(key, _outcome_of(c, result)) for key, c in call.carried()]

    async def _send_in_bulk(self, pair: _Pair, value: bool, changes: Sequence[Change]) -> list[Change]:
        """Mass updates (User.com): of a page of one audience and one value, the users whose id
        the destination gave us and who have nothing else to send (an enter's extra traits
        need a call of the user's own; leaves carry none) go in chunks of `bulk_size`, one
        request each, without riders (their other audiences' changes go by chunk in those
        audiences' own pages). Marked in flight before the chunks leave and recorded after,
        like any page. Returns the rest of the page, for the per-user calls."""
        size = self.destination.config.bulk_size
        if not size or not changes or self.sender.interrupted():
            return list(changes)
        self._store_ids()  # ids learned from the previous pages' answers
        ids = known_ids(self.engine, self.name, (c.subject for c in changes if not c.traits))
        bulk = [c for c in changes if c.subject in ids and not c.traits]
        if not bulk:
            return list(changes)
        mark_in_flight(self.engine, pair.key, self.name, bulk)
        chunks = [bulk[start:start + size] for start in range(0, len(bulk), size)]
        sent = await asyncio.gather(*(self._send_chunk(pair, value, chunk, ids) for chunk in chunks))
        outcomes = [outcome for chunk in sent for outcome in chunk]
        record_outcomes(self.engine, pair.key, self.name, outcomes)
        _tally(pair.report, outcomes)
        return [c for c in changes if c.subject not in ids or c.traits]

    async def _send_chunk(self, pair: _Pair, value: bool, chunk: Sequence[Change],
                          ids: dict[str, int]) -> list[Outcome]:
        """One mass update; its 2xx acknowledges every change of the chunk, a transient failure
        leaves each as one failed call would. A refusal (4xx: e.g. a user deleted at User.com,
        whose id no longer exists there) falls back to one call per user, whose answers teach
        the ids again (and re-create a deleted user)."""
        request = self.destination.mass_update(pair.key, value, [ids[c.subject] for c in chunk])
        result = await self.sender.call(request)
        self.calls += result.attempts > 0
        if result.verdict is not Verdict.REJECT:
            if pair.task is not None:
                pair.task.advance(len(chunk))
            return [_outcome_of(change, result) for change in chunk]
        log.warning("%s refused a mass update of %d users of %s (%s): sending them one by one",
                    self.name, len(chunk), pair.key, result.error)
        forget_ids(self.engine, self.name, [c.subject for c in chunk])
        answers = await asyncio.gather(*(self._send(Call(pair.key, change)) for change in chunk))
        return [outcome for answer in answers for _, outcome in answer]

    def _learn(self, subject: str, result: Result) -> None:
        """Keep the destination's id for the user from its answer (stored with the next page)."""
        remote_id = self.destination.remote_id(result.body) if result.verdict is Verdict.ACK else None
        if remote_id is not None:
            self.learned[subject] = remote_id

    def _store_ids(self) -> None:
        learned, self.learned = self.learned, {}
        learn_ids(self.engine, self.name, learned)


@dataclass
class _Pair:
    """One (audience, destination) pair of a run: its work list, guard, report, progress."""

    work: WorkList
    guard: guards.GuardVerdict
    report: PairReport
    task: Task | None = None
    ready: bool = False  # set up at the destination: its changes may be sent

    @property
    def key(self) -> str:
        return self.work.audience_key

    @property
    def total(self) -> int:
        return self.report.entered + self.report.left


@dataclass(frozen=True)
class Call:
    """One call to the destination: a change of the page's audience `key`, and the same
    user's changes of other audiences riding along, as (audience key, change)."""

    key: str
    change: Change
    riders: tuple[tuple[str, Change], ...] = ()

    def carried(self) -> list[tuple[str, Change]]:
        return [(self.key, self.change), *self.riders]


def _calls(key: str, page: Sequence[Change], riders: Sequence[tuple[str, Change]]) -> list[Call]:
    """The page's changes as calls, one per user (subject and ident), with its riders."""
    by_user: dict[tuple[str, str], list[tuple[str, Change]]] = {}
    for rider in riders:
        by_user.setdefault(rider[1].cursor, []).append(rider)
    return [Call(key, change, tuple(by_user.get(change.cursor, ()))) for change in page]


def _by_audience(items: Iterable[tuple[str, T]]) -> dict[str, list[T]]:
    grouped: dict[str, list[T]] = {}
    for key, item in items:
        grouped.setdefault(key, []).append(item)
    return grouped

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
