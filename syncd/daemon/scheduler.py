"""`syncd run`: APScheduler wiring. One run at a time, interval plus 0..jitter apart.

The daemon and `run-once` share one code path (run/pipeline.py: run_once). SIGTERM/SIGINT set a
stop flag that delivery checks between pages, so the page in flight is finished and
recorded before the process exits.

Under systemd (`Type=notify`) the daemon says READY=1 once the config is loaded, the
state migrated and the scheduler started; STATUS= with each run's one-line summary;
WATCHDOG=1 from a heartbeat while the scheduler ticks; STOPPING=1 on the way out. With
`[metrics] listen` set it serves Prometheus metrics, /healthz (the same question as the
watchdog), /readyz and the status page for as long as it runs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from datetime import UTC, datetime

from apscheduler.job import Job
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from syncd.config import Config, ScheduleConfig
from syncd.daemon.metrics import Endpoints, Metrics, MetricsServer
from syncd.daemon.notify import Heartbeat, Notifier
from syncd.daemon.page import page_renderer
from syncd.daemon.probes import PULSE, Cached, Liveness, readiness
from syncd.daemon.signals import stop_on_signals, wait_until
from syncd.errors import RunInProgress, StateError
from syncd.model import Null, Progress, ScheduledOutcome
from syncd.render import database_error, plural, readable, spelled
from syncd.run.pipeline import Options, open_state, run_once
from syncd.run.report import RunReport
from syncd.state import daemons
from syncd.state.readings import Reading, read
from syncd.state.runs import last_run

log = logging.getLogger("syncd")

PAGE_TTL = 10.0  # seconds the status page is reused: a phone left open must not load the ledger


def make_trigger(schedule: ScheduleConfig, start: datetime) -> IntervalTrigger:
    """Fires every `interval` plus a random 0..`jitter`: 2 to 3 hours apart by default."""
    return IntervalTrigger(
        seconds=int(schedule.interval.total_seconds()),
        jitter=int(schedule.jitter.total_seconds()) or None,
        start_date=start,
        timezone=UTC,
    )


def first_run_time(schedule: ScheduleConfig, last_start: datetime | None, now: datetime) -> datetime:
    """Now if run_at_start; otherwise one interval after the last run (from the ledger)."""
    if schedule.run_at_start:
        return now
    if last_start is None:
        return now + schedule.interval
    return max(now, last_start + schedule.interval)


def serve(config: Config, stop_event: threading.Event | None = None, progress: Progress | None = None,
          environ: Mapping[str, str] | None = None) -> None:
    """Run until SIGTERM/SIGINT (or until stop_event is set).

    `environ` carries systemd's NOTIFY_SOCKET / WATCHDOG_USEC; without it nothing is notified.
    """
    config = config.with_secrets()  # once, at start: every run sends with these keys
    stop = stop_event or threading.Event()
    # First: a signal during start-up (binding, migrating) stops the daemon as soon as it is up.
    # Started in the background by a script, SIGINT is ignored until a handler is set.
    stop_on_signals(stop)
    notifier = Notifier(environ or {})
    metrics = Metrics() if config.metrics else None
    endpoints = Endpoints()
    with ExitStack() as running:  # on the way out, everything started is undone in reverse
        # Bound before any database work, so a taken port fails fast.
        server = MetricsServer(metrics, config.metrics, endpoints) if metrics and config.metrics else None
        if server is not None:
            running.callback(server.stop)
        engine = open_state(config)
        running.callback(engine.dispose)
        options = Options(stop_event=stop, progress=progress or Null(),
                          latency=metrics.observe_latency if metrics else None)
        daemon = _Daemon(config, engine, options, notifier, metrics)
        if server is not None:
            daemon.refresh_metrics()
            endpoints.ready = readiness(engine)
            endpoints.page = Cached(page_renderer(config, engine), PAGE_TTL)
            server.start()
            log.info("serving Prometheus metrics on http://%s/metrics and the status page on http://%s/",
                     server.address, server.address)
        pulse = Liveness()
        name = daemons.holder()
        running.callback(_gone, engine, name)  # after the scheduler's shutdown: no beat follows
        scheduler, first = _start_scheduler(config, engine, daemon.job, pulse)
        daemon.after_run = _Beat(scheduler.get_job("sync"), engine, name)
        scheduler.add_job(daemon.after_run, IntervalTrigger(seconds=int(daemons.BEAT.total_seconds()),
                                                            timezone=UTC),
                          id="beat", max_instances=1, coalesce=True, misfire_grace_time=None,
                          next_run_time=datetime.now(UTC))
        running.callback(log.info, "syncd stopped")
        running.callback(scheduler.shutdown, wait=True)  # lets the run in flight record its page

        def alive() -> bool:
            return bool(scheduler.running) and pulse()

        endpoints.alive = alive
        heartbeat = Heartbeat(notifier, alive)
        if heartbeat.needed:
            heartbeat.start()
            running.callback(heartbeat.finish)
        running.callback(notifier.stopping)
        notifier.ready(f"started; first run at {first}")
        scheduler.resume()  # only now: systemd hears READY before anything a run says
        wait_until(stop)
    if daemon.fatal is not None:  # after the clean stop: main() reports it and exits 2
        raise daemon.fatal


def _start_scheduler(config: Config, engine: Engine, job: Callable[[], None],
                     pulse: Liveness) -> tuple[BackgroundScheduler, str]:
    scheduler = BackgroundScheduler(timezone=UTC)
    now = datetime.now(UTC)
    first = first_run_time(config.schedule, _last_start(engine), now)
    scheduler.add_job(
        job, make_trigger(config.schedule, now), id="sync", max_instances=1,
        coalesce=True, misfire_grace_time=None, next_run_time=first,
    )
    # The scheduler's pulse (probes.Liveness): ticks on the same loop and executor as the runs.
    scheduler.add_job(pulse.tick, IntervalTrigger(seconds=PULSE, timezone=UTC), id="pulse",
                      max_instances=1, coalesce=True, misfire_grace_time=None, next_run_time=now)
    scheduler.start(paused=True)
    first_text = readable(first)
    log.info("syncd started: %s, %s; first run at %s, then every %s + 0..%s",
             plural(len(config.audiences), "audience"), plural(len(config.destinations), "destination"),
             first_text,
             spelled(config.schedule.interval, "hms"), spelled(config.schedule.jitter, "hms"))
    return scheduler, first_text


class _Daemon:
    """One scheduled run, and what the outside world hears about it."""

    def __init__(self, config: Config, engine: Engine, options: Options, notifier: Notifier,
                 metrics: Metrics | None) -> None:
        self.config, self.engine, self.options = config, engine, options
        self.notifier, self.metrics = notifier, metrics
        self.last_status = ""
        self.after_run: Callable[[], None] = lambda: None  # tells the state when the next run starts
        # Why the daemon must stop (a state schema newer than this syncd): serve() raises it.
        self.fatal: StateError | None = None

    def job(self) -> None:
        """One scheduled run; then, while runs stop at their send time limit with changes left
        (a big initial send), the next one at once: the destination is kept busy, and every
        audience gets a fresh snapshot at least every max_send_time."""
        try:
            while self._run() and not (self.options.stop_event and self.options.stop_event.is_set()):
                log.info("the run stopped at its send time limit with changes left: the next run starts now")
        finally:
            self.after_run()

    def _run(self) -> bool:
        """One run; True if it stopped at its send time limit with changes left."""
        previous = f"; {self.last_status}" if self.last_status else ""
        self.notifier.status(f"running since {_hhmm()}{previous}")
        report = None
        try:
            report = run_once(self.config, self.options, engine=self.engine)
        except RunInProgress as exc:
            log.warning("skipping this run: %s", exc)
            self._ended(ScheduledOutcome.SKIPPED, f"run skipped at {_hhmm()}: {exc}")
        except StateError as exc:  # e.g. another machine migrated the shared ledger past this syncd
            self.fatal = exc
            self._ended(ScheduledOutcome.ERROR, f"stopping at {_hhmm()}: {exc}")
            if self.options.stop_event is not None:
                self.options.stop_event.set()
            return False
        except Exception:  # the daemon must outlive one bad run; the next run retries
            log.exception("run failed")
            self._ended(ScheduledOutcome.ERROR, f"run at {_hhmm()} failed: see the journal")
        else:
            if self.metrics is not None:
                self.metrics.record_run(report, self._reading(report.reading))
            self._tell(status_line(report))
            return report.out_of_time
        self.refresh_metrics()
        return False

    def _ended(self, outcome: str, status: str) -> None:
        if self.metrics is not None:
            self.metrics.count_run(outcome)
        self._tell(status)

    def _tell(self, status: str) -> None:
        self.last_status = status
        self.notifier.status(status)

    def refresh_metrics(self) -> None:
        """The gauges from a fresh reading (at start-up, after a run that produced no report)."""
        if self.metrics is not None:
            reading = self._reading(None)
            if reading is not None:
                self.metrics.show(reading)

    def _reading(self, reading: Reading | None) -> Reading | None:
        """`reading` (the one a run's alerts judged), else a fresh one; None if the state
        cannot be read (stale gauges are better than a dead daemon)."""
        if reading is not None:
            return reading
        try:
            return read(self.config, self.engine)
        except SQLAlchemyError as exc:
            log.warning("could not refresh the backlog metrics: %s", database_error(exc))
            return None


class _Beat:
    """Tells the state database, every minute and after each run, that this daemon lives and
    when its scheduler starts the next run (`status` and the page show it from any process).
    A failure is logged once until a beat works again; the daemon goes on.

    It reads the sync job's `next_run_time` from the Job itself: a job calling the scheduler
    (`get_job`) while it shuts down would wait for the lock shutdown holds while it waits for
    that job."""

    def __init__(self, job: Job | None, engine: Engine, name: str) -> None:
        self.job, self.engine, self.name = job, engine, name
        self.failing = False

    def __call__(self) -> None:
        try:
            daemons.beat(self.engine, self.name, self.job.next_run_time if self.job is not None else None)
        except SQLAlchemyError as exc:
            if not self.failing:
                log.warning("could not record the next run time: %s", database_error(exc))
            self.failing = True
        else:
            self.failing = False


def _gone(engine: Engine, name: str) -> None:
    try:
        daemons.gone(engine, name)
    except SQLAlchemyError as exc:  # the row ages out by itself
        log.warning("could not remove this daemon from the state database: %s", database_error(exc))


def status_line(report: RunReport) -> str:
    """systemctl status' one line: 'last run 2026-11-22 14:02Z ok: nat 120 acknowledged, 0 pending; …'"""
    totals: dict[str, list[int]] = {}
    for pair in report.pairs:
        acked_pending = totals.setdefault(pair.destination, [0, 0])
        acked_pending[0] += pair.acknowledged
        acked_pending[1] += pair.pending
    parts = [f"{name} {acked} acknowledged, {pending} pending" for name, (acked, pending) in totals.items()]
    if report.audience_errors:
        parts.append(f"{plural(len(report.audience_errors), 'audience query', 'audience queries')} failed")
    return f"last run {_hhmm(report.snapshot_at)} {report.outcome}: " + "; ".join(parts)


def _hhmm(moment: datetime | None = None) -> str:
    return (moment or datetime.now(UTC)).strftime("%Y-%m-%d %H:%MZ")


def _last_start(engine: Engine) -> datetime | None:
    run = last_run(engine)
    return run.started_at if run is not None else None
