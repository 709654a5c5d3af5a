"""One run, start to end: take the lease, snapshot each audience, deliver every pair
(delivery/pairs.py), record the run, prune, evaluate alerts. The daemon and `run-once` share it."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, replace
from functools import partial
from typing import TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from syncd.config import AudienceConfig, Config
from syncd.delivery.options import DeliveryOptions
from syncd.delivery.pairs import PAIRS_AT_ONCE, deliver_all
from syncd.model import PairOutcome, PairReport, SnapshotRow
from syncd.render import plural
from syncd.run import alerts
from syncd.run.report import RunReport, summary_lines
from syncd.source import QueryStopped, take_snapshot
from syncd.state.engine import cancelled_on, create_state_engine, now
from syncd.state.lease import LeaseKeeper, acquire_lease, release_lease
from syncd.state.runs import finish_run, last_snapshot_rows, prune, record_audience, record_result, start_run
from syncd.state.schema import Access, ensure_schema
from syncd.state.sends import adopt_idents, recover_in_flight
from syncd.state.snapshots import SnapshotCounts, replace_members

log = logging.getLogger("syncd")
T = TypeVar("T")


@dataclass
class Options(DeliveryOptions):
    """How a run behaves, beyond the config: what delivery takes (DeliveryOptions: the retry
    policy, a stop flag, a transport, progress, a latency observer), and how the run ends."""

    # The lines a run ends with (logged once); `resync` words its own.
    summary: Callable[[RunReport], list[str]] | None = None
    # A run of part of the config (resync, retry): what it leaves out is not gone from the config.
    part: bool = False


def settle_heap() -> None:
    """Once a process has loaded its modules and its config (the CLI, before any command): what
    exists now lives as long as the process, so the garbage collector stops scanning it
    (`gc.freeze`), and collects after 20,000 new objects rather than 700. A first sync makes
    millions of short-lived objects (a change's row, Identify, event); with the defaults the
    collector's passes over everything took ~11% of its send phase (bench/README §7)."""
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def open_state(config: Config, access: Access = Access.SEND) -> Engine:
    """The state engine, its schema checked (and created or upgraded if `access` allows it)."""
    engine = create_state_engine(config.state_url, pool_size=5 + PAIRS_AT_ONCE * len(config.destinations))
    try:
        migration = ensure_schema(engine, access, config.auto_migrate)
    except BaseException:
        engine.dispose()
        raise
    if migration.changed:
        log.info("state database: %s", migration)
    adopt_idents(engine, _email_pairs(config))
    return engine


def _schema_still_ours(config: Config, engine: Engine) -> None:
    """Before a run on an engine opened earlier: a schema another syncd migrated past this one
    stops the run (StateError, exit 2) before it writes; an older one is upgraded as at start."""
    migration = ensure_schema(engine, Access.SEND, config.auto_migrate)
    if migration.changed:
        log.info("state database: %s", migration)


def _email_pairs(config: Config) -> list[tuple[str, str]]:
    """The (audience, destination) pairs whose destination keys its users by email (Nat)."""
    keyed = {name for name, dest in config.destinations.items() if dest.needs_email}
    return [(a.key, name) for a in config.audiences for name in a.destinations if name in keyed]


def run_once(config: Config, options: Options | None = None, engine: Engine | None = None) -> RunReport:
    """One sync of every audience to every destination; RunInProgress if another run holds the lease."""
    config = config.with_secrets()  # a no-op when the caller (cli, scheduler) has resolved them
    options = options or Options()
    if options.stop_event is None:  # the lease keeper must be able to stop the run
        options = replace(options, stop_event=threading.Event())
    own_engine = engine is None
    if engine is None:
        engine = open_state(config)
    else:  # a long-lived engine (the daemon's): another machine may have migrated the ledger since
        _schema_still_ours(config, engine)
    try:
        lease = acquire_lease(engine)
        keeper = LeaseKeeper(engine, lease, options.stop_event)
        keeper.start()
        try:
            report = _run(config, options, engine)
            # Under the lease: one process at a time.
            report.reading = alerts.evaluate(config, engine, report, whole=not options.part)
            return report
        finally:
            keeper.finish()
            release_lease(engine, lease)
    finally:
        if own_engine:
            engine.dispose()


def _run(config: Config, options: Options, engine: Engine) -> RunReport:
    recovered = recover_in_flight(engine)
    if recovered:
        log.warning("%s in flight when the last run stopped; they will be re-sent with the same "
                    "messageId where still needed", plural(recovered, "change was", "changes were"))
    snapshot_at = now()
    report = RunReport(start_run(engine, snapshot_at), snapshot_at)
    log.info("run %d started (snapshot time %s)", report.run_id, snapshot_at.isoformat(),
             extra={"run_id": report.run_id})
    for audience in config.audiences:
        if _stopped(options):
            break
        off_main_thread(partial(_snapshot, config, engine, report, audience, options))
    # Stopped while taking snapshots: nothing is sent (not even the diffs are worked out).
    ready = [] if _stopped(options) else [a for a in config.audiences
                                           if a.key not in report.audience_errors]
    # The send time limit counts from here: however long the snapshots took, a run sends.
    deadline = time.monotonic() + config.schedule.send_limit.total_seconds()
    delivered = asyncio.run(deliver_all(config, options, engine, snapshot_at, ready, deadline))
    report.pairs, report.calls, report.out_of_time = delivered.pairs, delivered.calls, delivered.out_of_time
    report.conflicts = delivered.conflicts
    for audience in config.audiences:
        if audience.key in report.audience_errors:
            for name in audience.destinations:
                report.pairs.append(PairReport(audience.key, name, outcome=PairOutcome.SOURCE_FAILED,
                                               message=report.audience_errors[audience.key]))
    report.interrupted = options.stop_event is not None and options.stop_event.is_set()
    for pair in report.pairs:
        record_result(engine, report.run_id, asdict(pair))
    finish_run(engine, report.run_id, report.outcome)
    _prune(config, engine)
    for line in (options.summary or summary_lines)(report):
        log.log(logging.INFO if line.endswith(": ok") else logging.WARNING, "%s", line,
                extra={"run_id": report.run_id, "outcome": report.outcome})
    return report


def _prune(config: Config, engine: Engine) -> None:
    pruned = prune(engine, now() - config.retention)
    if pruned.total:
        log.info("retention %s: deleted %d runs (%d audience and %d destination records) and %d "
                 "settled ledger rows", config.retention, pruned.runs, pruned.run_audiences,
                 pruned.run_results, pruned.ledger_rows)


def off_main_thread(call: Callable[[], T]) -> T:
    """`call()` in a worker thread, waited for. Python runs signal handlers in the main thread
    between bytecodes: a query running there (SQLite computes inside one C call) would hold
    back SIGTERM's stop flag, and with it the query's cancellation, until the query ended.
    The main thread wakes twice a second meanwhile: a signal the kernel gives the worker
    thread only marks the handlers due, and a wait without a timeout would never run them."""
    if threading.current_thread() is not threading.main_thread():
        return call()
    with ThreadPoolExecutor(1, thread_name_prefix="syncd-query") as pool:
        future = pool.submit(call)
        while not wait([future], timeout=0.5).done:
            pass
        return future.result()


def _stopped(options: Options) -> bool:
    return options.stop_event is not None and options.stop_event.is_set()


def _snapshot(config: Config, engine: Engine, report: RunReport, audience: AudienceConfig,
              options: Options) -> None:
    counts = SnapshotCounts()
    with engine.connect() as conn:  # the last run's row count is the best guess for an ETA
        expected = last_snapshot_rows(conn, audience.key)
    task = options.progress.task(f"{audience.key}:", expected or None, "rows read")

    def merge(rows: Iterator[SnapshotRow]) -> None:
        # A stop also cancels the staging and the merge (long at 10M members).
        with cancelled_on(options.stop_event, engine):
            replace_members(engine, audience.key, rows, counts)

    try:
        error = take_snapshot(config, audience, report.snapshot_at, counts, merge, task, options.stop_event)
    except (QueryStopped, SQLAlchemyError) as exc:  # the merge is one transaction
        if not isinstance(exc, QueryStopped) and not _stopped(options):
            raise
        log.warning("audience %s: snapshot cancelled by the stop request; the ledger keeps the "
                    "last complete snapshot", audience.key, extra={"run_id": report.run_id})
        return
    if error is not None:
        report.audience_errors[audience.key] = error
        log.error("audience %s: %s", audience.key, error)
    report.audiences[audience.key] = counts
    record_audience(engine, report.run_id, audience.key, counts, error)
    if error is None:
        log.log(logging.WARNING if counts.skipped or counts.invalid_email else logging.INFO,
                "audience %s: %s, %s; skipped: %d without identifier, %s, %d too large (32 KB); %s "
                "dropped", audience.key, plural(counts.rows, "row"), plural(counts.members, "member"),
                counts.no_identifier, plural(counts.duplicates, "duplicate"), counts.too_large,
                plural(counts.invalid_email, "invalid email"))
