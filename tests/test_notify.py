"""sd_notify over a real AF_UNIX datagram socket, as systemd provides it."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncd.daemon.notify import Heartbeat, Notifier


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "n.sock")
    sock.bind(path)
    sock.settimeout(5)
    yield sock, path
    sock.close()


def test_ready_carries_status_in_one_datagram(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    Notifier({"NOTIFY_SOCKET": path}).ready("started;\nfirst run at 10:00Z")
    # a newline in the text must not start a new assignment
    assert sock.recv(4096) == b"READY=1\nSTATUS=started; first run at 10:00Z"


def test_abstract_namespace_socket() -> None:
    name = f"syncd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        Notifier({"NOTIFY_SOCKET": f"@{name}"}).stopping()
        assert sock.recv(4096).splitlines()[0] == b"STOPPING=1"


def test_no_socket_means_no_op() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    notifier.ready("x")  # nothing to send to, nothing raised


def test_a_vanished_socket_is_logged_once_not_raised(tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    notifier.status("a")
    notifier.status("b")
    assert [r.getMessage() for r in caplog.records] == [
        "cannot notify systemd on $NOTIFY_SOCKET: No such file or directory"
    ]


@pytest.mark.parametrize(("environ", "usec"), [
    ({"WATCHDOG_USEC": "300000000"}, 300_000_000),
    ({"WATCHDOG_USEC": "300000000", "WATCHDOG_PID": str(os.getpid())}, 300_000_000),
    ({"WATCHDOG_USEC": "300000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
    ({"WATCHDOG_USEC": "soon"}, None),
    ({}, None),
])
def test_watchdog_interval_from_the_environment(environ: dict[str, str], usec: int | None) -> None:
    assert Notifier(environ).watchdog_usec == usec


def test_heartbeat_pings_only_while_healthy(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    healthy = [False]
    heartbeat = Heartbeat(Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000"}),
                          lambda: healthy[0])
    assert heartbeat.needed
    heartbeat.start()
    try:
        sock.settimeout(0.2)  # ten intervals: an unhealthy daemon sends nothing
        with pytest.raises(TimeoutError):
            sock.recv(4096)
        healthy[0] = True
        sock.settimeout(5)
        assert sock.recv(4096) == b"WATCHDOG=1"
    finally:
        heartbeat.finish()


def test_no_heartbeat_without_watchdog(listener: tuple[socket.socket, str]) -> None:
    assert not Heartbeat(Notifier({"NOTIFY_SOCKET": listener[1]}), lambda: True).needed
