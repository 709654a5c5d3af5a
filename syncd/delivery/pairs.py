"""Delivery of one run: every destination at once, and per destination its pairs (audience,
destination), page by page through each pair's work list, with the guards and the send time
limit. Before the pages, a destination that lists its users learns their ids in bulk where that
pays (listing.py). A page goes first to the destination's bulk paths (bulk.py: mass updates),
then as grouped calls (calls.py), or all of it in batches (batches.py); each job is a module,
sharing the destination's Session, and the class's `bulk_paths` say which a destination has.

Up to PAIRS_AT_ONCE audiences of a destination send at the same time, sharing its pace and
concurrency, so a big initial send does not hold up the other audiences' increments.
Fairness stays per pair: each pages its own list; a rider is only taken."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy import Engine

from syncd import guards
from syncd.config import AudienceConfig, Config, DestinationConfig
from syncd.delivery import batches, bulk, calls, listing
from syncd.delivery.destinations import Destination, make_destination
from syncd.delivery.options import DeliveryOptions
from syncd.delivery.sender import Sender
from syncd.delivery.session import Pair, Session, in_thread
from syncd.errors import DestinationConflict, DestinationError
from syncd.model import Change, Pace, PairOutcome, PairReport
from syncd.state.operator import drop_approval
from syncd.state.sends import attribute_ensured, record_attribute
from syncd.state.work import DestinationWork

log = logging.getLogger("syncd")

PAGE_SIZE = 500
PAIRS_AT_ONCE = 4  # audiences one destination sends at the same time (one connection holds their lists)


@dataclass
class Delivered:
    """What delivery did in a run: each pair's report, the calls per destination, whether
    sending stopped at the send time limit with changes left, and the pairs whose setup
    conflicts with the destination's (audience, destination) -> why (the alerts tell)."""

    pairs: list[PairReport]
    calls: dict[str, int]
    out_of_time: bool
    conflicts: dict[tuple[str, str], str]


async def deliver_all(config: Config, options: DeliveryOptions, engine: Engine, snapshot_at: datetime,
                      audiences: Sequence[AudienceConfig], deadline: float) -> Delivered:
    """Every destination's pairs, the destinations at the same time (one's outage never
    blocks another's delivery)."""
    deliveries = []
    for dest in config.destinations.values():
        connected = [a for a in audiences if dest.name in a.destinations]
        if connected:
            deliveries.append((DestinationDelivery(dest, options, engine, snapshot_at, config, deadline),
                               connected))
    results = await asyncio.gather(*(delivery.run(connected) for delivery, connected in deliveries))
    return Delivered(pairs=[pair for pairs in results for pair in pairs],
                     calls={delivery.name: delivery.session.calls for delivery, _ in deliveries},
                     out_of_time=any(delivery.out_of_time for delivery, _ in deliveries),
                     conflicts={(key, delivery.name): str(exc) for delivery, _ in deliveries
                                for key, exc in delivery.session.conflicts.items()})


class DestinationDelivery:
    """Delivers every audience connected to one destination, page by page."""

    def __init__(self, config: DestinationConfig, options: DeliveryOptions, engine: Engine,
                 snapshot_at: datetime, run_config: Config, deadline: float) -> None:
        destination = make_destination(config)
        self.name, self.engine, self.progress = config.name, engine, options.progress
        self.guard_config, self.config_path = run_config.guards, run_config.path
        self.deadline, self.out_of_time = deadline, False
        self.session = Session(destination, _sender(destination, options), engine, snapshot_at)
        self.lists = asyncio.Lock()  # the work lists' one connection: one pair's page at a time

    @property
    def sender(self) -> Sender:
        return self.session.sender

    async def run(self, audiences: Sequence[AudienceConfig]) -> list[PairReport]:
        # One work table holds every pair's list: a page of one pair can then take the same
        # users' changes of the other pairs along (one call per user).
        destination = self.session.destination
        with DestinationWork(self.engine, self.name, destination.needs_email) as work:
            pairs: list[Pair] = []
            try:
                for audience in audiences:
                    pairs.append(await self._make(work, audience))
                held = [pair.key for pair in pairs if pair.guard.held]
                await self._prepare_all(pairs, await self._own_calls(work, held))
                await listing.learn_ids(self.session, work, held, self.progress, self.deadline)
                await self._count_calls(work, held)
                await self._send_pairs(pairs)
                return [self._finish(pair) for pair in pairs]
            finally:
                for task in [pair.task for pair in pairs] + [self.session.calls_task]:
                    if task is not None:
                        task.close()
                await self.sender.aclose()

    async def _make(self, work: DestinationWork, audience: AudienceConfig) -> Pair:
        # A run's biggest query, in a thread: requests the other destinations have in flight
        # are answered meanwhile instead of timing out behind a blocked event loop.
        pair_work = await in_thread(partial(work.make, audience.key))
        counts = pair_work.counts
        with self.engine.connect() as conn:
            guard = guards.check(conn, audience, self.guard_config, self.name, counts.members, counts.left)
        self._log_guard(guard)
        report = PairReport(audience.key, self.name, members=counts.members, entered=counts.entered,
                            left=counts.left, skipped=counts.skipped)
        return Pair(pair_work, guard, report)

    async def _own_calls(self, work: DestinationWork, held: Sequence[str]) -> bool:
        """Whether some user's changes go in a call of the user's own this run (not surely in
        bulk): User.com creates an attribute it does not have as text from such a call."""
        if "mass_updates" not in self.session.destination.bulk_paths:
            return True
        load = await self.session.workload(work, held)
        return load.users > load.plain_known

    async def _prepare_all(self, pairs: Sequence[Pair], check: bool) -> None:
        """Each pair with work gets its progress task, and its destination set up (User.com's
        attribute) before any page is sent: another pair's page may carry its changes. Set up
        once, it is checked again (`check`) in every run with calls of users' own; a run of
        mass updates alone relies on a refused one (bulk.py)."""
        for pair in pairs:
            if not pair.total or self.sender.interrupted():
                continue
            # No ETA of its own: the destination's calls show one (its audiences share its pace).
            pair.task = self.progress.task(f"{self.name}: {pair.key}", pair.total, "delivered",
                                           Pace(eta=False))
            try:
                await self._prepare(pair.key, check)
                pair.ready = True
            except DestinationError as exc:
                pair.report.message = str(exc)
                if isinstance(exc, DestinationConflict):
                    self.session.conflicts[pair.key] = exc
        self.session.pairs = {pair.key: pair for pair in pairs}

    async def _count_calls(self, work: DestinationWork, held: Sequence[str]) -> None:
        """The calls the ready pairs' changes will take (the destination's estimate, after any
        listing), shown as the destination's progress with its ETA at its rate limit."""
        ready = self.session.ready()
        if not ready or self.sender.interrupted():
            return
        estimate = self.session.destination.estimate(await self.session.workload(work, held, ready))
        if estimate.calls:
            self.session.calls_task = self.progress.task(
                f"{self.name}:", estimate.calls, "calls", Pace(self.sender.rate_limit, self.deadline))

    async def _prepare(self, key: str, check: bool) -> None:
        if not check:
            with self.engine.connect() as conn:
                if attribute_ensured(conn, self.name, key):
                    return
        await self.session.destination.prepare(self.sender, key)
        record_attribute(self.engine, self.name, key)

    async def _send_pairs(self, pairs: Sequence[Pair]) -> None:
        slots = asyncio.Semaphore(PAIRS_AT_ONCE)

        async def in_turn(pair: Pair) -> None:
            async with slots:
                try:
                    await self._send_all(pair)
                except DestinationError as exc:
                    pair.report.message = str(exc)

        tasks = [asyncio.create_task(in_turn(pair)) for pair in pairs if pair.ready]
        try:
            await asyncio.gather(*tasks)
            self.session.store_ids()
        except BaseException:  # one pair failed: stop the others at their next await
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def _send_all(self, pair: Pair) -> None:
        """Every change of the pair's work list not taken by another pair's page: the
        enters, then (unless held) the leaves. Past the send time limit no new page starts,
        but every pair sends its first page in every run: audiences waiting for a turn
        behind long initial sends still move, and so does a run whose snapshots took longer
        than the limit."""
        first, size = True, self._page_size()
        for value in (True, False) if not pair.guard.held else (True,):
            after: tuple[str, str] | str = ""
            async with InFlight(self._pages_at_once()) as pages:  # the enters all done before the leaves
                while True:
                    await pages.room()  # a stop seen while waiting for room takes no new page
                    if self.sender.interrupted():
                        break
                    taken = await self._next(pair, value, after, size, first)
                    if taken is None:
                        break
                    first, after = False, taken[0][-1].cursor
                    await self._send_page(pair, value, *taken, pages)
            if "mass_updates" in self.session.destination.bulk_paths:
                await bulk.flush(self.session, pair, value)  # a chunk held back for a fuller one

    def _page_size(self) -> int:
        """A page fills the destination's calls in flight: with batches, one batch each."""
        destination = self.session.destination
        if "batches" in destination.bulk_paths:
            return max(PAGE_SIZE, destination.batch_size * self.sender.concurrency)
        return PAGE_SIZE

    def _pages_at_once(self) -> int:
        """With batches, a pair's next pages are taken, marked and packed while the calls of the
        ones before are in flight, and their outcomes recorded while later pages' calls are: the
        receiver does not wait for syncd's database work, nor syncd for the receiver. Three: with
        a receiver 50 ms away, two left syncd waiting for answers (bench/README §7), four gained
        nothing more. Pages never share a change (each is taken from the list), and each page is
        marked in flight before its calls leave and recorded after its answers, as one at a time."""
        return 3 if "batches" in self.session.destination.bulk_paths else 1

    async def _next(self, pair: Pair, value: bool, after: tuple[str, str] | str, size: int,
                    first: bool) -> tuple[list[Change], list[calls.Call] | None] | None:
        """The pair's next page (`_take`). With batches, in a thread: the event loop meanwhile
        sends the page before and takes its answers (on PostgreSQL the database's time on a
        page was as long as syncd's own; bench/README §7), one pair at a time (their lists
        share one connection)."""
        take = partial(self._take, pair, value, after, size, first)
        if "batches" not in self.session.destination.bulk_paths:
            return take()
        async with self.lists:
            return await in_thread(take)

    def _take(self, pair: Pair, value: bool, after: tuple[str, str] | str, size: int,
              first: bool) -> tuple[list[Change], list[calls.Call] | None] | None:
        """The pair's next page (None: none left, or past the send time limit but for a pair's
        first page) and, with batches, its calls: the riders taken with the page, before
        another pair's page can take them, and every change carried marked in flight."""
        page = pair.work.page(value, after, size)
        if not page or (not first and self._out_of_time()):
            return None
        if "batches" not in self.session.destination.bulk_paths:
            return page, None
        return page, calls.calls_of(self.session, pair, page)

    async def _send_page(self, pair: Pair, value: bool, page: Sequence[Change],
                         grouped: list[calls.Call] | None, pages: InFlight) -> None:
        """With batches, the page's calls (`grouped`) go on in `pages`. Otherwise users the
        destination can update in bulk go by chunk first; the rest as calls, their riders
        taken now (nothing yields between the page and them but a bulk chunk's calls)."""
        if grouped is not None:
            pages.add(batches.send(self.session, grouped))
            return
        rest = list(page)
        if "mass_updates" in self.session.destination.bulk_paths:
            rest = await bulk.send_in_bulk(self.session, pair, value, page)
        if rest:
            await calls.send_page(self.session, calls.calls_of(self.session, pair, rest))

    def _finish(self, pair: Pair) -> PairReport:
        """The pair's outcome, once every pair is done (its changes may have gone out in
        another pair's calls)."""
        report, guard, sender = pair.report, pair.guard, self.sender
        report.pending = pair.total - report.acknowledged
        if report.pending and guard.held and not sender.refused:
            report.outcome, report.message = PairOutcome.HELD, guard.hold_message(self.config_path)
        elif report.pending:
            report.outcome = PairOutcome.STOPPED if sender.refused else PairOutcome.UNDELIVERED
            report.message = sender.stopped or report.message or _interrupted(sender) or (
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


class InFlight:
    """Pages sending at the same time, at most `limit`, in the order added; leaving waits for
    every one (none is left half-sent) and raises the first one's error."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.tasks: list[asyncio.Task[None]] = []

    async def room(self) -> None:
        """Returns once fewer than `limit` are sending (the oldest done; its error raised)."""
        while len(self.tasks) >= self.limit:
            await self.tasks.pop(0)

    def add(self, sending: Coroutine[Any, Any, None]) -> None:
        self.tasks.append(asyncio.create_task(sending))

    async def __aenter__(self) -> InFlight:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, *_: object) -> None:
        tasks, self.tasks = self.tasks, []
        done = await asyncio.gather(*tasks, return_exceptions=True)
        errors = [result for result in done if isinstance(result, BaseException)]
        if errors and kind is None:
            raise errors[0]


def _sender(destination: Destination, options: DeliveryOptions) -> Sender:
    """The destination's HTTP client for the run: its headers, pace and answer classification."""
    config, latency = destination.config, options.latency
    return Sender(
        name=destination.integration, headers=destination.headers(),
        concurrency=config.concurrency, rate_limit=config.rate_limit, timeout=config.timeout,
        policy=options.policy, stop_event=options.stop_event, secrets=destination.secrets(),
        transport=options.transport() if options.transport else None,
        on_latency=(lambda seconds: latency(config.name, seconds)) if latency else None,
        classify=destination.classify,
    )


def _interrupted(sender: Sender) -> str | None:
    if sender.stop_event is not None and sender.stop_event.is_set():
        return "stopped by signal; the rest waits for the next run"
    return None
