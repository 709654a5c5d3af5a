"""Shared fixtures: real state databases (SQLite always, PostgreSQL when available),
a real SQLite source database, and real HTTP stand-ins of Nat and User.com on 127.0.0.1."""

from __future__ import annotations

import base64
import ctypes
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, MetaData, create_engine, text
from sqlalchemy.engine import make_url

from syncd.config import Config, ScheduleConfig, load_config
from syncd.delivery.sender import RetryPolicy
from syncd.dev.standins import NatStandIn, UserComStandIn
from syncd.run.pipeline import Options, open_state, run_once
from syncd.run.report import RunReport
from syncd.state.engine import create_state_engine

NAT_KEY = "nat-test-key-SECRET-1f2e3d"
USERCOM_KEY = "usercom-test-key-SECRET-9a8b7c"
SEGMENT_KEY = "segment-test-key-SECRET-4c5d6e"
KEYS_ENV = {"NAT_API_KEY": NAT_KEY, "USERCOM_API_KEY": USERCOM_KEY, "SEGMENT_WRITE_KEY": SEGMENT_KEY}
# The secret part of the test alert webhook's URL (like a Slack webhook's path).
HOOK_SECRET = "hook-SECRET-T0D1E2"
# Every form in which a key could leak: as configured, and as sent in the Authorization header.
SECRETS = (NAT_KEY, USERCOM_KEY, SEGMENT_KEY, HOOK_SECRET,
           *(base64.b64encode(f"{key}:".encode()).decode() for key in (NAT_KEY, SEGMENT_KEY)))
FAST = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05, set_aside_after=3)
POSTGRES_URL = os.environ.get("SYNCD_TEST_POSTGRES_URL")
MYSQL_URL = os.environ.get("SYNCD_TEST_MYSQL_URL")


@pytest.fixture(params=["sqlite", "postgresql"])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty state database of each kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state.db'}"
        return
    if not POSTGRES_URL:
        pytest.skip("PostgreSQL state tests need SYNCD_TEST_POSTGRES_URL (e.g. "
                    "postgresql+psycopg://postgres@127.0.0.1:5432/test); .ci/run sets it")
    yield from _fresh_database(POSTGRES_URL)


def _fresh_database(server_url: str) -> Iterator[str]:
    """A new database on the PostgreSQL or MySQL server `server_url` names, dropped after: its
    own name, so parallel test runs do not collide."""
    name = f"syncd_test_{uuid.uuid4().hex[:12]}"
    mysql = server_url.startswith("mysql")
    quoted, force = (f"`{name}`", "") if mysql else (f'"{name}"', " WITH (FORCE)")
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {quoted}"))
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {quoted}{force}"))
        admin.dispose()


_fresh_postgres_database = _fresh_database  # the name the PostgreSQL source tests import


@pytest.fixture
def mysql_db() -> Iterator[str]:
    """A fresh, empty MySQL/MariaDB database."""
    if not MYSQL_URL:
        pytest.skip("MySQL/MariaDB tests need SYNCD_TEST_MYSQL_URL (e.g. "
                    "mysql+pymysql://root@127.0.0.1:3306/test); .ci/run sets it")
    yield from _fresh_database(MYSQL_URL)


class Shop:
    """A real SQLite source database with a `customers` table."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"
        with self.connect() as db:
            db.execute("CREATE TABLE customers (id TEXT, anon TEXT, email TEXT, url TEXT, plan TEXT, "
                       "last_order_at TEXT)")

    def connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path)

    def set(self, *rows: tuple[Any, ...]) -> None:
        """Replace the customers: (id, email) or (id, email, last_order_at) or full rows."""
        with self.connect() as db:
            db.execute("DELETE FROM customers")
            for row in rows:
                full = _customer(*row)
                db.execute("INSERT INTO customers VALUES (?, ?, ?, ?, ?, ?)", full)

    def members(self, *ids: str, domain: str = "example.com") -> None:
        self.set(*((i, f"{i}@{domain}") for i in ids))


def _customer(cid: Any, email: Any = None, last_order_at: Any = "2026-11-20 10:00:00",
              anon: Any = None, url: Any = None, plan: Any = "pro") -> tuple[Any, ...]:
    return (cid, anon, email, url, plan, last_order_at)


@pytest.fixture
def engine(state_url: str) -> Iterator[Engine]:
    """A migrated state database of each backend, for tests of state/ alone."""
    config = Config(path="-", state_url=state_url, schedule=ScheduleConfig(), sources={},
                    destinations={}, audiences=())
    engine = open_state(config)
    yield engine
    engine.dispose()


@pytest.fixture
def shop(tmp_path: Path) -> Shop:
    return Shop(tmp_path / "shop.db")


@pytest.fixture
def nat() -> Iterator[NatStandIn]:
    with NatStandIn(NAT_KEY) as server:
        yield server


@pytest.fixture
def usercom() -> Iterator[UserComStandIn]:
    with UserComStandIn(USERCOM_KEY) as server:
        yield server


ALL_QUERY = "SELECT id AS user_id, anon AS anonymous_id, email, url, plan FROM customers"


@dataclass
class Env:
    """Everything a sync test needs: config writer, runner, servers, shop."""

    tmp_path: Path
    state_url: str
    shop: Shop
    nat: NatStandIn
    usercom: UserComStandIn

    def write_config(self, audiences: str | None = None, extra: str = "", nat_key_env: str = "NAT_API_KEY",
                     nat_endpoint: str | None = None, nat_timeout: str = "2s") -> Path:
        audiences = audiences if audiences is not None else audience_toml("Buyers", ["nat", "usercom"])
        body = textwrap.dedent(f"""
            [state]
            url = "{self.state_url}"

            [sources.shop]
            url = "{self.shop.url}"

            [destinations.nat]
            type = "nat"
            endpoint = "{nat_endpoint or self.nat.url + '/segment'}"
            api_key_env = "{nat_key_env}"
            timeout = "{nat_timeout}"

            [destinations.usercom]
            type = "usercom"
            base_url = "{self.usercom.url}/api/public/"
            api_key_env = "USERCOM_API_KEY"
            timeout = "2s"
        """) + extra + audiences
        path = self.tmp_path / "config.toml"
        path.write_text(body)
        return path

    def config(self, keys: dict[str, str] | None = None, **kwargs: Any) -> Config:
        return load_config(self.write_config(**kwargs), {**KEYS_ENV, **(keys or {})})

    def run(self, config: Config | None = None, policy: RetryPolicy = FAST) -> RunReport:
        config = config or self.config()
        engine = open_state(config)
        try:
            return run_once(config, Options(policy=policy), engine=engine)
        finally:
            engine.dispose()

    def cli(self, *args: str, env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, cwd=self.tmp_path, env=env, timeout=timeout)

    def spawn(self, *args: str, config: Path | None = None) -> subprocess.Popen[str]:
        """`syncd ARGS --config ...` as a real background process (run-once by default)."""
        path = config or self.tmp_path / "config.toml"
        return subprocess.Popen(
            [sys.executable, "-m", "syncd", *(args or ("run-once",)), "--config", str(path)],
            cwd=self.tmp_path, env={**os.environ, **KEYS_ENV},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )


def audience_toml(name: str, destinations: list[str], query: str = ALL_QUERY, key: str | None = None) -> str:
    key_line = f'key = "{key}"\n' if key else ""
    quoted = ", ".join(f'"{d}"' for d in destinations)
    return (f'\n[[audiences]]\nname = "{name}"\n{key_line}source = "shop"\n'
            f'destinations = [{quoted}]\nquery = """\n{query}\n"""\n')


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **KEYS_ENV, **(env or {})}
    result = subprocess.run([sys.executable, "-m", "syncd", *args], cwd=cwd, env=full_env,
                            capture_output=True, text=True, timeout=timeout, check=False)
    assert_no_secrets(result.stdout, result.stderr)
    return result


def assert_no_secrets(*texts: str) -> None:
    for output in texts:
        for secret in SECRETS:
            assert secret not in output, "an API key leaked into output"


def wait_for(condition: Any, timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def env(tmp_path: Path, state_url: str, shop: Shop, nat: NatStandIn,
        usercom: UserComStandIn) -> Iterator[Env]:
    yield Env(tmp_path, state_url, shop, nat, usercom)
    assert_no_secrets(dump_state(state_url))


@pytest.fixture
def sqlite_env(tmp_path: Path, shop: Shop, nat: NatStandIn, usercom: UserComStandIn) -> Iterator[Env]:
    """For tests whose point is not the state backend."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    yield Env(tmp_path, url, shop, nat, usercom)
    assert_no_secrets(dump_state(url))


@pytest.fixture(autouse=True)
def _no_secrets_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Every test runs with recognisable keys: none may reach a log line or exception text."""
    yield
    assert_no_secrets(caplog.text)


def dump_state(url: str) -> str:
    """Every row of every table of a state database, as text."""
    if url.startswith("sqlite") and not Path(make_url(url).database or "").exists():
        return ""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            meta = MetaData()
            meta.reflect(conn)
            return "\n".join(repr(tuple(row)) for table in meta.sorted_tables
                             for row in conn.execute(table.select()))
    finally:
        engine.dispose()


def stamp_schema(url: str, revision: str) -> None:
    """The state's schema marked as `revision` (e.g. what `syncd migrate` of a newer release
    leaves behind, as far as this one can tell)."""
    engine = create_state_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})
    finally:
        engine.dispose()


def free_port() -> int:
    """A port nobody listens on right now (for a server the test starts next)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def signal_a_thread(pid: int, signum: int) -> None:
    """`signum` to one of the process's threads other than its main one (Linux's tgkill): the
    kernel may deliver a process's signal to any thread, and Python runs handlers in the main
    thread only."""
    others = sorted(int(tid) for tid in os.listdir(f"/proc/{pid}/task") if int(tid) != pid)
    assert others, f"process {pid} runs no thread but its main one"
    ctypes.CDLL(None, use_errno=True).tgkill(pid, others[0], signum)


def samples(text: str) -> dict[str, float]:
    """'name{labels} value' lines -> {'name{labels}': value}; comments must be HELP/TYPE."""
    result = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert line.split()[1] in ("HELP", "TYPE"), line
            continue
        name, value = line.rsplit(" ", 1)
        result[name] = float(value)
    return result


def required_tool(*names: str, purpose: str) -> str:
    """The path of the first of `names` on PATH. Missing: a skip on a developer's machine, a
    failure in CI (`.ci/run` installs it, so a skip there would hide a broken install)."""
    for name in names:
        found = shutil.which(name)
        if found is not None:
            return found
    reason = f"{purpose} needs {names[0]}; .ci/run installs it"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)
