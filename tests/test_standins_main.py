"""The stand-ins as anyone starts them (`python -m syncd.dev.standins`), the config shipped for
them, and `make demo`'s port check: real processes, real sockets."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from syncd.config import load_config
from syncd.dev.standins import DEFAULT_KEYS, DEFAULT_PORTS, KEY_ENV, basic_auth

from conftest import free_port

ROOT = Path(__file__).resolve().parent.parent


def standins(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "syncd.dev.standins", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def started() -> Iterator[tuple[subprocess.Popen[str], dict[str, str]]]:
    """The three stand-ins on free ports, and the URL each printed."""
    process = standins("--nat-port", "0", "--usercom-port", "0", "--segment-port", "0",
                       "--usercom-id-field", "user_id", "--segment-key", "my-write-key")
    assert process.stdout is not None
    lines = [process.stdout.readline() for _ in range(5)]
    urls = {line.split()[0]: line.split()[2] for line in lines[:3]}
    yield process, urls | {"_text": "".join(lines)}
    if process.poll() is None:
        process.kill()
    process.communicate()


@pytest.fixture
def taken() -> Iterator[int]:
    """A port something already listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_standins_start_print_their_urls_and_keys_and_stop_on_sigterm(
        started: tuple[subprocess.Popen[str], dict[str, str]]) -> None:
    process, urls = started
    assert set(urls) == {"Nat", "User.com", "Segment", "_text"}
    for key in ("demo-nat-key", "demo-usercom-key", "my-write-key", "/_standin/received",
                "export NAT_API_KEY=demo-nat-key USERCOM_API_KEY=demo-usercom-key SEGMENT_WRITE_KEY="):
        assert key in urls["_text"]
    nat = httpx.post(urls["Nat"], headers={"Authorization": basic_auth("demo-nat-key")},
                     json={"type": "identify", "userId": "u1", "timestamp": "2026-11-22T09:00:00Z",
                           "traits": {"email": "u1@example.com", "buyers": True}})
    assert nat.status_code == 200
    headers = {"Authorization": "Token demo-usercom-key", "Accept": "*/*; version=2"}
    created = httpx.post(urls["User.com"] + "users/update_or_create/", json={"custom_id": "u1"},
                         headers=headers)
    assert created.status_code == 200
    listing = httpx.get(urls["User.com"] + "users/", headers=headers).json()
    assert [(r["id"], r["user_id"]) for r in listing["results"]] == [(created.json()["id"], "u1")]
    segment = httpx.post(urls["Segment"], headers={"Authorization": basic_auth("my-write-key")},
                         json={"batch": [{"type": "identify", "userId": "u1", "messageId": "m1"}]})
    assert segment.status_code == 200
    received = {name: httpx.get(f"{urlsplit(url).scheme}://{urlsplit(url).netloc}/_standin/received").json()
                for name, url in urls.items() if name != "_text"}
    assert received["Nat"][0]["traits"]["buyers"] is True
    assert received["User.com"] == [{"custom_id": "u1"}]
    assert received["Segment"] == [{"type": "identify", "userId": "u1", "messageId": "m1"}]
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0


def test_a_taken_port_is_one_line_naming_it(taken: int) -> None:
    process = standins("--nat-port", "0", "--usercom-port", "0", "--segment-port", str(taken))
    out, err = process.communicate(timeout=30)
    assert process.returncode == 1 and out == ""
    assert err == (f"standins: cannot start the Segment stand-in on 127.0.0.1:{taken}: "
                   "Address already in use\n")


def test_the_shipped_config_points_at_the_standins_defaults() -> None:
    """examples/standins.toml (tracked; `.gitignore` ignores only the demo's databases there)
    reaches the stand-ins `python -m syncd.dev.standins` starts, and the demo's shop."""
    path = ROOT / "examples" / "standins.toml"
    tracked = subprocess.run(["git", "ls-files", "--error-unmatch", str(path)], cwd=ROOT,
                             capture_output=True, check=False)
    assert tracked.returncode == 0, "examples/standins.toml is not tracked"
    env = {KEY_ENV[name]: DEFAULT_KEYS[name] for name in ("nat", "usercom", "segment")}
    config = load_config(path, env)
    demo = load_config(ROOT / "config.toml", env)
    assert {name: urlsplit(d.url).port for name, d in config.destinations.items()} == {
        "nat": DEFAULT_PORTS["nat"], "usercom": DEFAULT_PORTS["usercom"], "cdp": DEFAULT_PORTS["segment"]}
    assert config.sources["shop"].url == demo.sources["shop"].url
    assert config.state_url != demo.state_url  # `make demo` resets its own state, not this one
    assert f"127.0.0.1:{DEFAULT_PORTS['segment']}/v1/batch" in path.read_text()


def test_the_demo_stops_before_touching_its_state_when_a_port_is_taken(tmp_path: Path, taken: int) -> None:
    config = (ROOT / "config.toml").read_text()
    config = config.replace("127.0.0.1:18081", f"127.0.0.1:{free_port()}")
    config = config.replace("127.0.0.1:18082", f"127.0.0.1:{taken}")
    config = config.replace("127.0.0.1:18083", f"127.0.0.1:{free_port()}")
    (tmp_path / "config.toml").write_text(config)
    (tmp_path / "examples").mkdir()
    state, shop = tmp_path / "syncd-state.db", tmp_path / "examples" / "shop.db"
    state.write_bytes(b"the state of an earlier demo")
    shop.write_bytes(b"the shop of an earlier demo")
    done = subprocess.run([sys.executable, "-m", "syncd.dev.demo"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, check=False,
                          env={**os.environ, "SYNCD_CONFIG": str(tmp_path / "config.toml")})
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"demo: cannot start the User.com stand-in on 127.0.0.1:{taken}: ")
    assert state.read_bytes() == b"the state of an earlier demo"
    assert shop.read_bytes() == b"the shop of an earlier demo"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["config.toml", "examples", "shop.db",
                                                           "syncd-state.db"]


def test_the_demo_runs_when_its_ports_are_free(tmp_path: Path) -> None:
    """The check lets a normal demo through (its output is the demo's, unchanged)."""
    config = (ROOT / "config.toml").read_text()
    for port in ("18081", "18082", "18083"):
        config = config.replace(f"127.0.0.1:{port}", f"127.0.0.1:{free_port()}")
    (tmp_path / "config.toml").write_text(config)
    done = subprocess.run([sys.executable, "-m", "syncd.dev.demo"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=180, check=False,
                          env={**os.environ, "SYNCD_CONFIG": str(tmp_path / "config.toml")})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("seeded examples/shop.db with 40 customers; state reset\n")
    assert done.stdout.endswith("demo finished: every change delivered\n")
    # Step 2's changes are listed under step 2's heading, and User.com's requests add up to
    # syncd's calls (the run summary's) plus the attribute requests. The customers User.com
    # already has are listed and sent in bulk on the first sync.
    assert done.stdout.index("== 2. ") < done.stdout.index("   entered: ")
    assert "45 changes in 32 calls" in done.stderr
    assert ("User.com got 36 requests: syncd's 32 calls (the run summary's: 1 page listing the users it "
            "already had, 1 mass update for them, 30 update_or_create for new users and members whose "
            "extra columns need a call of their own) and 4 to list and create the boolean attributes"
            ) in done.stdout
    # Segment's API: one Identify per user and one Track per audience entered, in batches.
    assert "Segment's API accepted 80 events in 2 calls: 40 Identify" in done.stdout
    assert "cdp: 2 audiences, 40 entered, 0 left, 40 changes in 2 calls" in done.stderr
