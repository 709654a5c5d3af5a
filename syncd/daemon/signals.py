"""SIGTERM/SIGINT -> a stop flag that delivery checks before every request."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

log = logging.getLogger("syncd")


# How often a main thread that waits wakes up to run the signal handlers. Python runs them in
# the main thread only; a signal the kernel gives another thread (a run's, the metrics
# server's) only marks them due, and a main thread blocked in a wait without a timeout never
# runs them: a daemon once ignored the SIGINT a script sent it right after its first page
# (test_readme hung), and stopped at the next SIGINT.
SIGNAL_CHECK = 0.5


def wait_until(stop: threading.Event) -> None:
    """Blocks until `stop` is set, running due signal handlers every SIGNAL_CHECK seconds."""
    while not stop.wait(SIGNAL_CHECK):
        pass


def stop_on_signals(stop: threading.Event) -> None:
    """The first signal asks for a clean stop: requests in flight finish and are recorded."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: finishing the requests in flight, then stopping",
                 signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
