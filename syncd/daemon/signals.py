"""SIGTERM/SIGINT -> a stop flag that delivery checks before every request."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

log = logging.getLogger("syncd")


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
