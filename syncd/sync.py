"""run_once(): the whole pipeline, one call per stage.

    config -> source (snapshot into the ledger) -> plan (desired vs acknowledged)
           -> identify (messages) -> delivery (per destination, concurrently) -> run record
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from functools import partial
from typing import TypeVar

import httpx
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from syncd import alerts, guards, ledger
from syncd.config import AudienceConfig, Config, DestinationConfig, GuardConfig
from syncd.db import cancelled_on, create_state_engine, migrate
from syncd.delivery import RetryPolicy, Sender, Verdict
from syncd.destinations import Destination, DestinationError, make_destination
from syncd.identify import MAX_MESSAGE_BYTES, identify, size_of
from syncd.ledger import Outcome, SnapshotCounts
from syncd.plan import Change
from syncd.progress import Null, Progress, Task
from syncd.source import QueryStopped, SourceError, open_source, stream_members

log = logging.getLogger("syncd")
T = TypeVar("T")

PAGE_SIZE = 500
PAIRS_AT_ONCE = 4  # audiences one destination sends at the same time (each holds a connection)


@dataclass
class PairReport:
    """One (audience, destination) pair in one run."""

    audience_key: str
    destination: str
    members: int = 0
    entered: int = 0
    left: int = 0
    sent: int = 0
    acknowledged: int = 0
    skipped: int = 0
    failed: int = 0
    pending: int = 0
    outcome: str = "ok"
    message: str | None = None


@dataclass
class RunReport:
    run_id: int
    snapshot_at: datetime
    audiences: dict[str, SnapshotCounts] = field(default_factory=dict)
    audience_errors: dict[str, str] = field(default_factory=dict)
    pairs: list[PairReport] = field(default_factory=list)
    interrupted: bool = False
    out_of_time: bool = False  # sending stopped at [schedule] max_send_time with changes left

    @property
    def delivered(self) -> bool:
        return not self.audience_errors and not self.interrupted and all(
            p.outcome == "ok" for p in self.pairs
        )

    @property
    def outcome(self) -> str:
        if self.interrupted:
            return "interrupted"
        if self.delivered:
            return "ok"
        held_only = not self.audience_errors and all(p.outcome in ("ok", "held") for p in self.pairs)
        return "held" if held_only else "undelivered"

    @property
    def exit_code(self) -> int:
        return 0 if self.delivered else 1


@dataclass
class Options:
    """How a run behaves, beyond the config: tests shorten the waits, the daemon passes a stop
    flag, the CLI a progress display, the daemon's metrics a latency observer."""

    policy: RetryPolicy = field(default_factory=RetryPolicy)
    stop_event: threading.Event | None = None
    transport: Callable[[], httpx.AsyncBaseTransport] | None = None
    progress: Progress = field(default_factory=Null)
    latency: Callable[[str, float], None] | None = None  # (destination, seconds per response)
    # The lines a run ends with (logged once); `resync` words its own.
    summary: Callable[[RunReport], list[str]] | None = None


def open_state(config: Config) -> Engine:
    engine = create_state_engine(config.state_url, pool_size=5 + PAIRS_AT_ONCE * len(config.destinations))
    migrate(engine)
    ledger.adopt_idents(engine, _email_pairs(config))
    return engine


def _email_pairs(config: Config) -> list[tuple[str, str]]:
    """The (audience, destination) pairs whose destination keys its users by email (Nat)."""
    keyed = {name for name, dest in config.destinations.items() if make_destination(dest).needs_email}
    return [(a.key, name) for a in config.audiences for name in a.destinations if name in keyed]


def run_once(config: Config, options: Options | None = None, engine: Engine | None = None) -> RunReport:
    """One sync of every audience to every destination; RunInProgress if another run holds the lease."""
    config = config.with_secrets()  # a no-op when the caller (cli, scheduler) has resolved them
    options = options or Options()
    if options.stop_event is None:  # the lease keeper must be able to stop the run
        options = replace(options, stop_event=threading.Event())
    own_engine = engine is None
    engine = engine or open_state(config)
    try:
        lease = ledger.acquire_lease(engine)
        keeper = _LeaseKeeper(engine, lease, options.stop_event)
        keeper.start()
        try:
            report = _run(config, options, engine)
            alerts.evaluate(config, engine, report)  # still under the lease: one process at a time
            return report
        finally:
            keeper.finish()
            ledger.release_lease(engine, lease)
    finally:
        if own_engine:
            engine.dispose()


class _LeaseKeeper(threading.Thread):
    """Renews the run lease while the run lasts; if it was lost (taken over after it
    expired), stops the run, so two processes never deliver the same changes at once."""

    def __init__(self, engine: Engine, lease: ledger.LeaseHandle, stop: threading.Event | None) -> None:
        super().__init__(name="syncd-lease", daemon=True)
        self.engine, self.lease, self.stop = engine, lease, stop
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.lease.ttl.total_seconds() / 5):
            try:
                if not ledger.renew_lease(self.engine, self.lease):
                    log.error("lost the run lease (another process took it over): stopping this run")
                    if self.stop is not None:
                        self.stop.set()
                    return
            except SQLAlchemyError as exc:  # keep trying: the lease outlives a short outage
                log.warning("could not renew the run lease: %s", " ".join(str(exc).split())[:200])

    def finish(self) -> None:
        self.done.set()
        self.join()


def _run(config: Config, options: Options, engine: Engine) -> RunReport:
    recovered = ledger.recover_in_flight(engine)
    if recovered:
        log.warning("%d changes were in flight when the last run stopped; they will be re-sent "
                    "with the same messageId where still needed", recovered)
    snapshot_at = ledger.now()
    report = RunReport(ledger.start_run(engine, snapshot_at), snapshot_at)
    log.info("run %d started (snapshot time %s)", report.run_id, snapshot_at.isoformat(),
             extra={"run_id": report.run_id})
    for audience in config.audiences:
        if _stopped(options):
            break
        _off_main_thread(partial(_snapshot, config, engine, report, audience, options))
    # Stopped while taking snapshots: nothing is sent (not even the diffs are worked out).
    ready = [] if _stopped(options) else [a for a in config.audiences
                                           if a.key not in report.audience_errors]
    # The send time limit counts from here: however long the snapshots took, a run sends.
    deadline = time.monotonic() + config.schedule.send_limit.total_seconds()
    report.pairs = asyncio.run(_deliver_all(config, options, engine, report, ready, deadline))
    for audience in config.audiences:
        if audience.key in report.audience_errors:
            for name in audience.destinations:
                report.pairs.append(PairReport(audience.key, name, outcome="source_failed",
                                               message=report.audience_errors[audience.key]))
    report.interrupted = options.stop_event is not None and options.stop_event.is_set()
    for pair in report.pairs:
        ledger.record_result(engine, report.run_id, asdict(pair))
    ledger.finish_run(engine, report.run_id, report.outcome)
    _prune(config, engine)
    for line in (options.summary or summary_lines)(report):
        log.log(logging.INFO if line.endswith(": ok") else logging.WARNING, "%s", line,
                extra={"run_id": report.run_id, "outcome": report.outcome})
    return report


def _prune(config: Config, engine: Engine) -> None:
    pruned = ledger.prune(engine, ledger.now() - config.retention)
    if pruned.total:
        log.info("retention %s: deleted %d runs (%d audience and %d destination records) and %d "
                 "settled ledger rows", config.retention, pruned.runs, pruned.run_audiences,
                 pruned.run_results, pruned.ledger_rows)


def _off_main_thread(call: Callable[[], None]) -> None:
    """`call()` in a worker thread, waited for. Python runs signal handlers in the main thread
    between bytecodes: a query running there (SQLite computes inside one C call) would hold
    back SIGTERM's stop flag, and with it the query's cancellation, until the query ended."""
    if threading.current_thread() is not threading.main_thread():
        call()
        return
    with ThreadPoolExecutor(1, thread_name_prefix="syncd-snapshot") as pool:
        pool.submit(call).result()


def _stopped(options: Options) -> bool:
    return options.stop_event is not None and options.stop_event.is_set()


def _snapshot(config: Config, engine: Engine, report: RunReport, audience: AudienceConfig,
              options: Options) -> None:
    counts, error = SnapshotCounts(), None
    with engine.connect() as conn:  # the last run's row count is the best guess for an ETA
        expected = ledger.last_snapshot_rows(conn, audience.key)
    task = options.progress.task(f"{audience.key}:", expected or None, "rows read")
    try:
        source = open_source(config.sources[audience.source].url)
        try:
            rows = stream_members(source, audience.query, report.snapshot_at, counts, task,
                                  audience_key=audience.key, stop=options.stop_event)
            # A stop also cancels the staging and the merge (long at 10M members).
            with cancelled_on(options.stop_event, engine):
                ledger.replace_members(engine, audience.key, rows, counts)
        finally:
            source.dispose()
            task.close()
    except (QueryStopped, SQLAlchemyError) as exc:  # the merge is one transaction
        if not isinstance(exc, QueryStopped) and not _stopped(options):
            raise
        log.warning("audience %s: snapshot cancelled by the stop request; the ledger keeps the "
                    "last complete snapshot", audience.key, extra={"run_id": report.run_id})
        return
    except SourceError as exc:
        error = f"query failed on source {audience.source!r}: {exc}"
        report.audience_errors[audience.key] = error
        log.error("audience %s: %s", audience.key, error)
    report.audiences[audience.key] = counts
    ledger.record_audience(engine, report.run_id, audience.key, counts, error)
    if error is None:
        log.log(logging.WARNING if counts.skipped or counts.invalid_email else logging.INFO,
                "audience %s: %d rows, %d members; skipped: %d without identifier, %d duplicates, "
                "%d too large (32 KB); %d invalid emails dropped", audience.key, counts.rows,
                counts.members, counts.no_identifier, counts.duplicates, counts.too_large,
                counts.invalid_email)


async def _deliver_all(config: Config, options: Options, engine: Engine, report: RunReport,
                       audiences: Sequence[AudienceConfig], deadline: float) -> list[PairReport]:
    deliveries = []
    for dest in config.destinations.values():
        connected = [a for a in audiences if dest.name in a.destinations]
        if connected:
            deliveries.append((_Delivery(dest, options, engine, report.snapshot_at, config.guards,
                                         config.path, deadline), connected))
    results = await asyncio.gather(*(delivery.run(connected) for delivery, connected in deliveries))
    report.out_of_time = any(delivery.out_of_time for delivery, _ in deliveries)
    return [pair for pairs in results for pair in pairs]


class _Delivery:
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
            return list(await asyncio.gather(*tasks))
        except BaseException:  # one pair failed: stop the others at their next await
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        finally:
            await self.sender.aclose()

    async def _pair(self, audience: AudienceConfig) -> PairReport:
        with self.engine.connect() as conn:  # holds the pair's work list until the pair is done
            work = ledger.WorkList(conn, audience.key, self.name, self.destination.needs_email)
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
                    ledger.drop_approval(self.engine, audience.key, self.name)
            finally:
                work.drop()
        return pair

    async def _send_work(self, work: ledger.WorkList, guard: guards.GuardVerdict) -> PairReport:
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
            pair.outcome, pair.message = "held", guard.hold_message(self.config_path)
        elif pair.pending:
            pair.outcome = "stopped" if self.sender.refused else "undelivered"
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
            if ledger.attribute_ensured(conn, self.name, key):
                return
        await self.destination.prepare(self.sender, key)
        ledger.record_attribute(self.engine, self.name, key)

    async def _send_all(self, work: ledger.WorkList, pair: PairReport, task: Task,
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
                ledger.mark_in_flight(self.engine, key, self.name, page)
                outcomes = await asyncio.gather(*(self._send(key, change, task) for change in page))
                ledger.record_outcomes(self.engine, key, self.name, outcomes)
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


def summary_lines(report: RunReport) -> list[str]:
    """One human line per destination, then one per audience that failed."""
    lines = []
    by_destination: dict[str, list[PairReport]] = {}
    for pair in report.pairs:
        by_destination.setdefault(pair.destination, []).append(pair)
    for name, pairs in by_destination.items():
        def total(attr: str, pairs: list[PairReport] = pairs) -> int:
            return sum(int(getattr(p, attr)) for p in pairs)
        bad = [p for p in pairs if p.outcome != "ok"]
        verdict = "ok" if not bad else "; ".join(
            f"{p.audience_key}: {p.outcome}" + (f" ({p.message})" if p.message else "") for p in bad
        )
        lines.append(
            f"{name}: {len(pairs)} audience(s), {total('entered')} entered, {total('left')} left, "
            f"{total('sent')} sent, {total('acknowledged')} acknowledged, "
            f"{total('skipped')} skipped (no email), {total('failed')} failed, "
            f"{total('pending')} pending: {verdict}"
        )
    return lines
