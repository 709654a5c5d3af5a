"""Progress: the rate/ETA maths, the plain log lines for journald, the terminal bar, and
that a real run reports snapshot rows and deliveries through it."""

from __future__ import annotations

import io
import logging

import pytest

from syncd.cli.progress import Bar, LogLines, Meter, for_stream, format_seconds
from syncd.model import Pace
from syncd.run.pipeline import Options, open_state, run_once

from conftest import FAST, Env


class Clock:
    """A hand-moved monotonic clock: no waiting, no frozen global time."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_and_eta_from_the_average_so_far() -> None:
    clock = Clock()
    meter = Meter("nat: buyers", 50_000, "delivered", clock)
    assert meter.rate() is None and meter.eta() is None  # nothing done yet
    clock.now += 60
    meter.done = 12_000
    assert meter.rate() == 200.0
    assert meter.eta() == 190.0  # 38000 left at 200/s
    assert meter.describe() == "nat: buyers 12000/50000 delivered (24%), ETA 3m10s"


def test_unknown_total_shows_a_count_without_eta() -> None:
    clock = Clock()
    meter = Meter("buyers:", None, "rows read", clock)
    clock.now += 5
    meter.done = 700
    assert meter.eta() is None and meter.percent() is None
    assert meter.describe() == "buyers: 700 rows read"


def test_an_estimate_exceeded_caps_at_100_percent_without_eta() -> None:
    clock = Clock()
    meter = Meter("buyers:", 100, "rows read", clock)
    clock.now += 1
    meter.done = 130
    assert meter.describe() == "buyers: 130/100 rows read (100%)"


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (42.4, "42s"), (59.6, "1m0s"), (190, "3m10s"), (3725, "1h2m"),
])
def test_format_seconds(seconds: float, text: str) -> None:
    assert format_seconds(seconds) == text


def test_log_lines_come_every_interval_not_every_change(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    progress = LogLines(every=10, clock=clock)
    caplog.set_level(logging.INFO, logger="syncd.progress")
    task = progress.task("nat: order_completed_last_30days", 50_000, "delivered")
    for _ in range(100):  # quick work says nothing
        task.advance(10)
    assert caplog.records == []
    clock.now += 5
    task.advance(11_000)  # 5 s in: still quiet
    clock.now += 5
    task.advance(0)  # 10 s in: 12000 done at 1200/s
    assert [r.getMessage() for r in caplog.records] == [
        "nat: order_completed_last_30days 12000/50000 delivered (24%), ETA 32s",
    ]
    record = caplog.records[0]
    assert (record.done, record.total, record.eta_seconds) == (12_000, 50_000, 32)  # type: ignore[attr-defined]
    clock.now += 9
    task.advance(1)
    assert len(caplog.records) == 1  # next line only 10 s after the last


def test_bar_redraws_one_line_and_clears_it_when_done() -> None:
    clock, out = Clock(), io.StringIO()
    bar = Bar(out, clock=clock, fps=2, width=10, columns=200)
    nat = bar.task("nat: buyers", 4, "delivered")
    usercom = bar.task("usercom: buyers", 2, "delivered")
    clock.now += 1
    nat.advance(2)
    assert out.getvalue().endswith(
        "\r\033[K[#####.....] nat: buyers 2/4 delivered (50%), ETA 1s"
        " | [..........] usercom: buyers 0/2 delivered (0%)"
    )
    drawn = out.getvalue()
    nat.advance()  # within 1/fps of the last draw: not redrawn
    assert out.getvalue() == drawn
    nat.close()
    usercom.close()
    assert out.getvalue().endswith("\r\033[K")
    assert "\n" not in out.getvalue()


def test_bar_never_wraps_a_narrow_terminal() -> None:
    clock, out = Clock(), io.StringIO()
    bar = Bar(out, clock=clock, columns=40)
    bar.task("usercom: order_completed_last_30days", 50_000, "delivered").advance()
    assert len(out.getvalue().split("\r\033[K")[-1]) == 39


def test_log_lines_when_not_a_terminal_or_json() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert isinstance(for_stream(io.StringIO(), "text"), LogLines)
    assert isinstance(for_stream(Tty(), "text"), Bar)
    assert isinstance(for_stream(Tty(), "json"), LogLines)


def test_a_run_reports_rows_read_and_changes_delivered(sqlite_env: Env,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    sqlite_env.shop.members("u1", "u2", "u3")
    config = sqlite_env.config()
    engine = open_state(config)
    caplog.set_level(logging.INFO, logger="syncd.progress")
    try:
        run_once(config, Options(policy=FAST, progress=LogLines(every=0)), engine=engine)
        first = {r.getMessage() for r in caplog.records}
        caplog.clear()
        sqlite_env.shop.members("u1", "u2", "u3", "u4")
        run_once(config, Options(policy=FAST, progress=LogLines(every=0)), engine=engine)
        second = {r.getMessage() for r in caplog.records}
    finally:
        engine.dispose()
    assert "buyers: 3 rows read" in first  # no earlier run: no estimate
    assert {"nat: buyers 3/3 delivered (100%)", "usercom: buyers 3/3 delivered (100%)"} <= first
    assert "buyers: 4/3 rows read (100%)" in second  # the last run's 3 rows as the estimate
    assert "nat: buyers 1/1 delivered (100%)" in second


def test_paced_work_goes_at_most_at_its_rate_limit() -> None:
    """A destination's calls: before any is measured, the rate limit gives the ETA; a faster
    start (a burst) does not promise more than the limit."""
    clock = Clock()
    meter = Meter("usercom:", 530, "calls", clock, Pace(rate=10))
    assert meter.eta() == 53.0
    clock.now += 10
    meter.done = 200  # 20/s so far
    assert meter.eta() == 33.0
    assert meter.describe() == "usercom: 200/530 calls (37%), ETA 33s"


def test_work_past_the_send_time_limit_says_what_it_leaves_instead_of_an_eta(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    progress = LogLines(every=0, clock=clock)
    caplog.set_level(logging.INFO, logger="syncd.progress")
    task = progress.task("usercom:", 53_000, "calls", Pace(rate=10, stops_at=clock.now + 600))
    clock.now += 60
    task.advance(600)
    assert caplog.records[-1].getMessage() == (
        "usercom: 600/53000 calls (1%), stops at max_send_time in 9m0s: about 47000 calls left for the "
        "next run")
    assert caplog.records[-1].eta_seconds is None  # type: ignore[attr-defined]
    meter = Meter("usercom:", 530, "calls", clock, Pace(rate=10, stops_at=clock.now + 600))
    assert meter.describe() == "usercom: 0/530 calls (0%), ETA 53s"  # done well before the limit


def test_an_audience_of_a_shared_destination_shows_no_eta_of_its_own() -> None:
    clock = Clock()
    meter = Meter("usercom: buyers", 10, "delivered", clock, Pace(eta=False))
    clock.now += 1
    meter.done = 3
    assert meter.describe() == "usercom: buyers 3/10 delivered (30%)"
