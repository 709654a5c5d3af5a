"""Progress of long work: snapshot rows read, changes delivered per destination.

A run only calls `progress.task(label, total, unit, pace)` and then `advance()` /
`close()` on what it returns (the Progress and Task interfaces in model.py). Who shows it
is chosen at the edge (cli):

    Bar        a terminal: one `\\r`-redrawn line with every active task, rate and ETA
    LogLines   no terminal (journald, files): a plain log line per task every `every` s
    Null       libraries and tests that don't care (model.py)

The clock is injectable so the rate/ETA maths and the pacing are tested without
waiting or freezing time.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from typing import TextIO

from syncd.model import Pace, Progress, Task
from syncd.render import duration

log = logging.getLogger("syncd.progress")

Clock = Callable[[], float]


class Meter:
    """Counts done out of total since a start time; rate and ETA from the average so far, or
    for paced work (`pace`) at most its rate limit, and what a send time limit leaves over."""

    def __init__(self, label: str, total: int | None, unit: str, clock: Clock,
                 pace: Pace | None = None) -> None:
        self.label, self.total, self.unit, self.clock, self.pace = label, total, unit, clock, pace
        self.started = clock()
        self.done = 0

    def rate(self) -> float | None:
        """Per second since the start; None until there is something to measure."""
        elapsed = self.clock() - self.started
        return self.done / elapsed if self.done and elapsed > 0 else None

    def _rate_ahead(self) -> float | None:
        """The rate the rest goes at: the average so far, never above the pace's rate limit
        (shared with the destination's other work); before anything is measured, the limit."""
        observed, limit = self.rate(), self.pace.rate if self.pace else None
        if observed is None or limit is None:
            return observed or limit
        return min(observed, limit)

    def _ahead(self) -> tuple[int, float] | None:
        """What is left and the rate it goes at; None where there is no ETA to give."""
        if self.total is None or (self.pace is not None and not self.pace.eta):
            return None
        rate = self._rate_ahead()
        return None if rate is None else (max(0, self.total - self.done), rate)

    def _stops_in(self) -> float | None:
        """Seconds until the run starts nothing new (its max_send_time); None: no such limit."""
        if self.pace is None or self.pace.stops_at is None:
            return None
        return max(0.0, self.pace.stops_at - self.clock())

    def eta(self) -> float | None:
        """Seconds left; None if unknown, or if the run stops first (see `left_at_stop`)."""
        ahead, stops_in = self._ahead(), self._stops_in()
        if ahead is None or (stops_in is not None and ahead[0] / ahead[1] > stops_in):
            return None
        return ahead[0] / ahead[1]

    def left_at_stop(self) -> int | None:
        """What the run's send time limit will leave for the next run (None: it ends before)."""
        ahead, stops_in = self._ahead(), self._stops_in()
        if ahead is None or stops_in is None or ahead[0] / ahead[1] <= stops_in:
            return None
        return max(1, round(ahead[0] - ahead[1] * stops_in))

    def percent(self) -> int | None:
        if not self.total:
            return None
        return min(100, self.done * 100 // self.total)

    def describe(self) -> str:
        """'nat: buyers 12000/50000 delivered (24%), ETA 3m10s'"""
        count = f"{self.done}/{self.total}" if self.total is not None else str(self.done)
        text = f"{self.label} {count} {self.unit}"
        percent = self.percent()
        if percent is not None:
            text += f" ({percent}%)"
        if self.done >= (self.total or 0):
            return text
        eta, left = self.eta(), self.left_at_stop()
        if eta is not None:
            text += f", ETA {format_seconds(eta)}"
        elif left is not None:
            stops_in = self._stops_in() or 0.0
            text += (f", stops at max_send_time in {format_seconds(stops_in)}: about {left} {self.unit} "
                     "left for the next run")
        return text


def format_seconds(seconds: float) -> str:
    """3725 -> '1h2m5s'; 42.4 -> '42s'; 0 -> '0s'."""
    return duration(round(seconds), "hms", most=2)


class LogLines:
    """One INFO line per task at most every `every` seconds, and none for work that is quick."""

    def __init__(self, every: float = 10.0, clock: Clock = time.monotonic,
                 logger: logging.Logger = log) -> None:
        self.every, self.clock, self.logger = every, clock, logger

    def task(self, label: str, total: int | None, unit: str, pace: Pace | None = None) -> Task:
        return _LogTask(Meter(label, total, unit, self.clock, pace), self)


class _LogTask:
    def __init__(self, meter: Meter, owner: LogLines) -> None:
        self.meter, self.owner = meter, owner
        self.last = meter.started

    def advance(self, n: int = 1) -> None:
        self.meter.done += n
        now = self.owner.clock()
        if now - self.last >= self.owner.every:
            self.last = now
            meter, eta = self.meter, self.meter.eta()
            self.owner.logger.info("%s", meter.describe(), extra={
                "task": meter.label, "done": meter.done, "total": meter.total,
                "eta_seconds": None if eta is None else round(eta),
            })

    def close(self) -> None:
        pass  # the run's summary lines report the outcome


class Bar:
    """One terminal line, redrawn in place at most `fps` times a second."""

    def __init__(self, stream: TextIO, clock: Clock = time.monotonic, fps: float = 8.0,
                 width: int = 20, columns: int | None = None) -> None:
        self.stream, self.clock, self.width, self.columns = stream, clock, width, columns
        self.min_gap = 1.0 / fps
        self.active: list[Meter] = []
        self.drawn_at: float | None = None

    def task(self, label: str, total: int | None, unit: str, pace: Pace | None = None) -> Task:
        meter = Meter(label, total, unit, self.clock, pace)
        self.active.append(meter)
        return _BarTask(meter, self)

    def draw(self, force: bool = False) -> None:
        now = self.clock()
        if not force and self.drawn_at is not None and now - self.drawn_at < self.min_gap:
            return
        self.drawn_at = now
        line = " | ".join(self._render(m) for m in self.active)
        # A line wider than the terminal wraps, and \r would then redraw only its tail.
        columns = self.columns or shutil.get_terminal_size((100, 24)).columns
        self.stream.write("\r\033[K" + line[: max(columns - 1, 10)])
        self.stream.flush()

    def finish(self, meter: Meter) -> None:
        self.active.remove(meter)
        if self.active:
            self.draw(force=True)
        else:
            self.stream.write("\r\033[K")
            self.stream.flush()

    def _render(self, meter: Meter) -> str:
        percent = meter.percent()
        if percent is None:
            return meter.describe()
        filled = percent * self.width // 100
        return f"[{'#' * filled}{'.' * (self.width - filled)}] {meter.describe()}"


class _BarTask:
    def __init__(self, meter: Meter, bar: Bar) -> None:
        self.meter, self.bar = meter, bar

    def advance(self, n: int = 1) -> None:
        self.meter.done += n
        self.bar.draw()

    def close(self) -> None:
        self.bar.finish(self.meter)


def for_stream(stream: TextIO, log_format: str) -> Progress:
    """A bar on a terminal; log lines otherwise (and always with JSON logs, for shippers)."""
    if log_format == "text" and stream.isatty():
        return Bar(stream)
    return LogLines()
