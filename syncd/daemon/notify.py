"""sd_notify(3) without libsystemd: tell systemd we are ready, alive, what we did, stopping.

systemd passes `$NOTIFY_SOCKET` (an AF_UNIX datagram socket; a leading '@' means
the abstract namespace) to a `Type=notify` service, and `$WATCHDOG_USEC` when
`WatchdogSec=` is set. Without `$NOTIFY_SOCKET` (a terminal, a test, another
supervisor) every call is a no-op. A failed send is logged once and never stops
the daemon: systemd would notice a missing READY/WATCHDOG by itself.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping

log = logging.getLogger("syncd")


class Notifier:
    def __init__(self, environ: Mapping[str, str]) -> None:
        path = environ.get("NOTIFY_SOCKET", "")
        self.address: str | bytes | None = None
        if path.startswith("@"):
            self.address = b"\0" + path[1:].encode()
        elif path.startswith("/"):
            self.address = path
        self.watchdog_usec = _watchdog_usec(environ)
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: str) -> None:
        """notify(READY="1", STATUS="…") sends 'READY=1\\nSTATUS=…' in one datagram."""
        if self.address is None:
            return
        # One line per field: a newline inside STATUS would start a bogus assignment.
        text = "\n".join(f"{key}={' '.join(value.split())}" for key, value in fields.items())
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self.address)
                sock.sendall(text.encode())
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("cannot notify systemd on $NOTIFY_SOCKET: %s", exc.strerror or exc)

    def ready(self, status: str) -> None:
        self.send(READY="1", STATUS=status)

    def status(self, status: str) -> None:
        self.send(STATUS=status)

    def stopping(self) -> None:
        self.send(STOPPING="1", STATUS="stopping: finishing the requests in flight")


class Heartbeat(threading.Thread):
    """Sends WATCHDOG=1 every half watchdog interval while `healthy()` says so.

    If the daemon wedges (the scheduler died), the pings stop and systemd restarts us.
    """

    def __init__(self, notifier: Notifier, healthy: Callable[[], bool]) -> None:
        super().__init__(name="syncd-watchdog", daemon=True)
        self.notifier, self.healthy = notifier, healthy
        self.done = threading.Event()

    @property
    def needed(self) -> bool:
        return self.notifier.enabled and self.notifier.watchdog_usec is not None

    def run(self) -> None:
        assert self.notifier.watchdog_usec is not None
        interval = self.notifier.watchdog_usec / 2_000_000
        while not self.done.wait(interval):
            if self.healthy():
                self.notifier.send(WATCHDOG="1")

    def finish(self) -> None:
        self.done.set()
        if self.is_alive():
            self.join()


def _watchdog_usec(environ: Mapping[str, str]) -> int | None:
    """$WATCHDOG_USEC if it is meant for this process ($WATCHDOG_PID unset or ours)."""
    pid = environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec if usec > 0 else None
