"""`syncd run`: APScheduler wiring. One run at a time, interval plus 0..jitter apart.

The daemon and `run-once` share one code path (sync.run_once). SIGTERM/SIGINT set a
stop flag that delivery checks between pages, so the page in flight is finished and
recorded before the process exits.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import Engine

from syncd import ledger
from syncd.config import Config, ScheduleConfig
from syncd.progress import Null, Progress
from syncd.signals import stop_on_signals
from syncd.sync import Options, open_state, run_once

log = logging.getLogger("syncd")


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


def serve(config: Config, stop_event: threading.Event | None = None,
          progress: Progress | None = None) -> None:
    """Run until SIGTERM/SIGINT (or until stop_event is set)."""
    stop = stop_event or threading.Event()
    engine = open_state(config)
    stop_on_signals(stop)
    scheduler = BackgroundScheduler(timezone=UTC)
    now = datetime.now(UTC)
    first = first_run_time(config.schedule, _last_start(engine), now)
    scheduler.add_job(
        _job, make_trigger(config.schedule, now), args=(config, engine, Options(stop_event=stop,
                                                                                progress=progress or Null())),
        id="sync", max_instances=1, coalesce=True, misfire_grace_time=None, next_run_time=first,
    )
    scheduler.start()
    log.info("syncd started: %d audience(s), %d destination(s); first run at %s, then every %s + 0..%s",
             len(config.audiences), len(config.destinations), first.strftime("%Y-%m-%d %H:%M:%SZ"),
             _fmt(config.schedule.interval), _fmt(config.schedule.jitter))
    try:
        stop.wait()
    finally:
        scheduler.shutdown(wait=True)
        engine.dispose()
        log.info("syncd stopped")


def _job(config: Config, engine: Engine, options: Options) -> None:
    try:
        run_once(config, options, engine=engine)
    except ledger.RunInProgress as exc:
        log.warning("skipping this run: %s", exc)
    except Exception:  # the daemon must outlive one bad run; the next run retries
        log.exception("run failed")


def _last_start(engine: Engine) -> datetime | None:
    with engine.connect() as conn:
        run = ledger.last_run(conn)
    return run.started_at if run is not None else None


def _fmt(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return "".join(f"{v}{u}" for v, u in ((hours, "h"), (minutes, "m"), (secs, "s")) if v) or "0s"
