"""`syncd run` as systemd and Prometheus see it: a real process, real sockets, real stand-ins."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from conftest import KEYS_ENV, NAT_KEY, USERCOM_KEY, Env, free_port, samples, signal_a_thread


def start_daemon(env: Env, config: Path, extra_env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "syncd", "run", "--config", str(config)],
        cwd=env.tmp_path, env={**os.environ, **KEYS_ENV, **(extra_env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def stop_daemon(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
    return stderr


def wait_for(condition: Callable[[], bool], process: subprocess.Popen[str], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"syncd exited {process.returncode}: {process.communicate()[1]}")
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_metrics_after_a_run_with_one_destination_down(env: Env) -> None:
    env.shop.members("u1", "u2", "u3")
    env.nat.down = True
    port = free_port()
    config = env.write_config(extra=f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
    process = start_daemon(env, config)
    url = f"http://127.0.0.1:{port}/metrics"

    def scraped() -> dict[str, float]:
        try:
            return samples(httpx.get(url, timeout=2).text)
        except httpx.TransportError:
            return {}

    try:
        wait_for(lambda: scraped().get('syncd_runs_total{outcome="undelivered"}') == 1, process)
        body = httpx.get(url).text
        got = samples(body)
    finally:
        if process.poll() is None:
            stop_daemon(process)
    nat, usercom = 'audience="buyers",destination="nat"', 'audience="buyers",destination="usercom"'
    assert got['syncd_runs_total{outcome="undelivered"}'] == 1
    assert got[f"syncd_changes_sent_total{{{nat}}}"] == 3
    assert got[f"syncd_changes_acknowledged_total{{{nat}}}"] == 0
    assert got[f"syncd_changes_acknowledged_total{{{usercom}}}"] == 3
    assert got['syncd_runs_total{outcome="ok"}'] == 0  # present from the start
    # the backlog, from the ledger after the run
    assert got[f"syncd_pending_changes{{{nat}}}"] == 3
    assert got[f"syncd_pending_changes{{{usercom}}}"] == 0
    assert got[f"syncd_oldest_pending_age_seconds{{{nat}}}"] >= 0
    assert got[f"syncd_oldest_pending_age_seconds{{{usercom}}}"] == 0
    # only the pair that got everything has a last success
    assert f"syncd_last_success_timestamp_seconds{{{usercom}}}" in got
    assert f"syncd_last_success_timestamp_seconds{{{nat}}}" not in got
    # one latency observation per HTTP response (a 503 is a response too)
    assert got['syncd_delivery_latency_seconds_count{destination="nat"}'] == env.nat.requests
    assert got['syncd_delivery_latency_seconds_count{destination="usercom"}'] == env.usercom.requests
    assert NAT_KEY not in body and USERCOM_KEY not in body and env.nat.url not in body


def test_a_stop_signal_the_kernel_gives_another_thread_still_stops_the_daemon(sqlite_env: Env) -> None:
    """Python runs signal handlers in the main thread; a process-directed signal may land on any
    thread (once, a script's SIGINT was ignored and test_readme hung). Sent to a thread other
    than the main one (tgkill), SIGTERM must still stop the daemon cleanly."""
    sqlite_env.shop.members("u1")
    port = free_port()
    config = sqlite_env.write_config(extra=f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
    process = start_daemon(sqlite_env, config)

    def ran_once() -> bool:
        try:
            return samples(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text).get(
                'syncd_runs_total{outcome="ok"}') == 1
        except httpx.TransportError:
            return False

    try:
        wait_for(ran_once, process)
        signal_a_thread(process.pid, signal.SIGTERM)
        _, stderr = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    assert "received SIGTERM" in stderr and "syncd stopped" in stderr and "Traceback" not in stderr


def test_run_once_serves_no_metrics(sqlite_env: Env) -> None:
    sqlite_env.shop.members("u1")
    port = free_port()
    config = sqlite_env.write_config(extra=f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
    result = sqlite_env.cli("run-once", "--config", str(config))
    assert result.returncode == 0 and "metrics" not in result.stderr


def test_a_taken_metrics_port_exits_1_with_one_line(sqlite_env: Env) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = sqlite_env.write_config(extra=f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
        result = sqlite_env.cli("run", "--config", str(config))
    assert result.returncode == 1
    assert f"ERROR cannot serve metrics on 127.0.0.1:{port}: Address already in use" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (sqlite_env.tmp_path / "state.db").exists()  # failed before any database work


class NotifySocket:
    """What systemd listens on: an AF_UNIX datagram socket."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def receive(self) -> None:
        """Everything queued now (watchdog pings keep coming: never wait for silence)."""
        try:
            while True:
                self.messages.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            pass

    def index(self, predicate: Callable[[str], bool], receive: bool = True) -> int | None:
        if receive:
            self.receive()
        return next((i for i, m in enumerate(self.messages) if predicate(m)), None)


def test_daemon_tells_systemd_ready_status_watchdog_and_stopping(sqlite_env: Env) -> None:
    sqlite_env.shop.members("u1", "u2")
    notify = NotifySocket(sqlite_env.tmp_path / "n.sock")
    process = start_daemon(sqlite_env, sqlite_env.write_config(), {
        "NOTIFY_SOCKET": str(sqlite_env.tmp_path / "n.sock"), "WATCHDOG_USEC": "200000",
    })

    def has(field: str) -> Callable[[str], bool]:
        return lambda message: field in message.splitlines()

    def status_of_run(message: str) -> bool:
        return any(line.startswith("STATUS=last run ") for line in message.splitlines())

    try:
        wait_for(lambda: notify.index(status_of_run) is not None, process)
        wait_for(lambda: notify.index(has("WATCHDOG=1")) is not None, process)
        assert notify.index(has("STOPPING=1")) is None
        stderr = stop_daemon(process)
        notify.receive()
    finally:
        if process.poll() is None:
            process.kill()
        notify.sock.close()
    ready, status, stopping = (notify.index(has("READY=1"), receive=False),
                               notify.index(status_of_run, receive=False),
                               notify.index(has("STOPPING=1"), receive=False))
    assert ready is not None and status is not None and stopping is not None, notify.messages
    assert ready < status < stopping
    [line] = [s for s in notify.messages[status].splitlines() if s.startswith("STATUS=")]
    assert line.endswith(" ok: nat 2 acknowledged, 0 pending; usercom 2 acknowledged, 0 pending"), line
    assert "syncd stopped" in stderr
    running = notify.index(lambda m: m.startswith("STATUS=running since "), receive=False)
    assert running is not None and ready < running < status


def test_without_notify_socket_nothing_is_sent_and_all_works(sqlite_env: Env) -> None:
    sqlite_env.shop.members("u1")
    process = start_daemon(sqlite_env, sqlite_env.write_config(), {"NOTIFY_SOCKET": ""})
    try:
        wait_for(lambda: len(sqlite_env.nat.accepted()) == 1, process)
        stderr = stop_daemon(process)
    finally:
        if process.poll() is None:
            process.kill()
    assert "notify" not in stderr
