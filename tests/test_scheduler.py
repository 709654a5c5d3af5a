"""Schedule maths: the trigger's next fire times, checked with explicit datetimes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from freezegun import freeze_time

from syncd.config import ScheduleConfig
from syncd.daemon.scheduler import first_run_time, make_trigger

START = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)


def test_runs_are_two_to_three_hours_apart_by_default() -> None:
    trigger = make_trigger(ScheduleConfig(), START)
    previous = START
    gaps = []
    for _ in range(300):
        fire = trigger.get_next_fire_time(previous, previous + timedelta(seconds=1))
        assert fire is not None
        gaps.append(fire - previous)
        previous = fire
    assert all(timedelta(hours=2) <= gap <= timedelta(hours=3) for gap in gaps)
    # The jitter really spreads the runs: not all at the lower or upper bound.
    assert max(gaps) - min(gaps) > timedelta(minutes=30)


def test_no_jitter_means_exact_interval() -> None:
    schedule = ScheduleConfig(interval=timedelta(minutes=15), jitter=timedelta(0))
    trigger = make_trigger(schedule, START)
    fire = trigger.get_next_fire_time(START, START + timedelta(seconds=1))
    assert fire == START + timedelta(minutes=15)


@freeze_time("2026-11-22 09:00:00")
def test_first_run_time() -> None:
    now = datetime.now(UTC)
    assert first_run_time(ScheduleConfig(run_at_start=True), None, now) == now
    later = ScheduleConfig(run_at_start=False)
    assert first_run_time(later, None, now) == now + timedelta(hours=2)
    # Restarted 30 minutes after the last run: wait for the rest of the interval.
    assert first_run_time(later, now - timedelta(minutes=30), now) == now + timedelta(minutes=90)
    # Down for longer than an interval: run now.
    assert first_run_time(later, now - timedelta(hours=5), now) == now
