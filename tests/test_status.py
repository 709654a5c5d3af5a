"""`syncd status` and the backlog gauges: a pair's backlog age, also when nothing was ever
tried (real state databases, real stand-ins)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from freezegun import freeze_time
from test_daemon import start_daemon, stop_daemon

from syncd.cli.commands import status
from syncd.config import Config
from syncd.daemon.metrics import Metrics
from syncd.dev.standins import Fault
from syncd.run.pipeline import open_state

from conftest import USERCOM_KEY, Env, audience_toml, samples, wait_for


def rows_at(config: Config, moment: str) -> list[dict[str, Any]]:
    """`status --json`'s rows as read at `moment` (frozen time)."""
    engine = open_state(config)
    try:
        with freeze_time(moment):
            return status.status(config, engine)
    finally:
        engine.dispose()


def _down_from_the_start(env: Env) -> None:
    env.usercom.fail_next(100_000, Fault(503, body="<html>Service Unavailable</html>"))


def _key_refused(env: Env) -> None:
    env.usercom.fail_next(100_000, Fault(401, body='{"detail": "Invalid token."}'))


def _attribute_of_the_wrong_type(env: Env) -> None:
    """Someone made `buyers` a text attribute in User.com before syncd ever ran."""
    response = httpx.post(f"{env.usercom.base_url}attributes/",
                          json={"name": "buyers", "value_type": "string", "content_type": "clientuser"},
                          headers={"Authorization": f"Token {USERCOM_KEY}", "Accept": "*/*; version=2"})
    assert response.status_code == 201


@pytest.mark.parametrize("fault", [_down_from_the_start, _key_refused, _attribute_of_the_wrong_type])
def test_a_pair_never_acknowledged_shows_its_backlog_age(env: Env, fault: Callable[[Env], None]) -> None:
    """User.com fails before any change is tried (listing attributes), so no change carries a
    `pending_since`: the age comes from the pair's runs that did not end `ok`."""
    env.shop.members("u1", "u2")
    fault(env)
    config = env.config()
    for hour in ("09", "10"):
        with freeze_time(f"2026-11-22 {hour}:00:00", real_asyncio=True):
            assert env.run(config).exit_code == 1
    assert env.usercom.users() == {}  # nothing ever reached User.com

    engine = open_state(config)
    try:
        with freeze_time("2026-11-22 10:30:00"):
            rows = {r["destination"]: r for r in status.status(config, engine)}
            metrics = Metrics(clock=lambda: datetime(2026, 11, 22, 10, 30, tzinfo=UTC).timestamp())
            metrics.refresh(config, engine)
    finally:
        engine.dispose()
    usercom, nat = rows["usercom"], rows["nat"]
    assert usercom["pending"] == 2 and usercom["acknowledged"] == 0
    assert usercom["oldest_pending_at"] == "2026-11-22T09:00:00Z"  # the first run that failed
    assert usercom["oldest_pending_age_seconds"] == 5400
    assert "1h30m" in status.format_status(list(rows.values()))
    assert nat["pending"] == 0 and nat["oldest_pending_age_seconds"] is None
    got = samples(metrics.render())
    assert got['syncd_oldest_pending_age_seconds{audience="buyers",destination="usercom"}'] == 5400
    assert got['syncd_oldest_pending_age_seconds{audience="buyers",destination="nat"}'] == 0
    # What `status --json` prints (now, long after the frozen runs).
    printed = json.loads(env.cli("status", "--json", "--config", str(config.path)).stdout)
    assert next(r for r in printed if r["destination"] == "usercom")["oldest_pending_age_seconds"] > 5400


def test_exits_held_by_the_guard_show_their_age(sqlite_env: Env) -> None:
    """Held exits are never tried, so none has a `pending_since`: the held runs give the age."""
    env = sqlite_env
    config = env.config(audiences=audience_toml("Buyers", ["nat"]))
    ids = [f"u{i:02d}" for i in range(20)]
    env.shop.members(*ids)
    with freeze_time("2026-11-22 08:00:00", real_asyncio=True):
        assert env.run(config).exit_code == 0
    env.shop.members(*ids[:8])  # 12 of 20 leave: held
    for hour in ("09", "10"):
        with freeze_time(f"2026-11-22 {hour}:00:00", real_asyncio=True):
            assert env.run(config).outcome == "held"
    row = rows_at(config, "2026-11-22 10:00:30")[0]
    assert (row["pending"], row["last_outcome"]) == (12, "held")
    assert row["oldest_pending_at"] == "2026-11-22T09:00:00Z" and row["oldest_pending_age_seconds"] == 3630


def test_an_ok_run_ends_the_backlog_streak(sqlite_env: Env) -> None:
    """An `ok` run ends the streak: the next outage counts from its own start, not the first's."""
    env = sqlite_env
    env.shop.members("u1")
    config = env.config()
    with freeze_time("2026-11-22 08:00:00", real_asyncio=True):
        env.usercom.fail_next(100_000, Fault(503))
        env.run(config)
    env.usercom.heal()
    with freeze_time("2026-11-22 09:00:00", real_asyncio=True):
        assert env.run(config).exit_code == 0
    env.shop.members("u1", "u2")
    env.usercom.fail_next(100_000, Fault(503))
    with freeze_time("2026-11-22 10:00:00", real_asyncio=True):
        env.run(config)
    row = next(r for r in rows_at(config, "2026-11-22 11:00:00") if r["destination"] == "usercom")
    assert row["oldest_pending_at"] == "2026-11-22T10:00:00Z" and row["oldest_pending_age_seconds"] == 3600


def test_pending_always_has_an_age_also_for_work_no_run_has_tried(sqlite_env: Env) -> None:
    """A destination added to an audience: its pair has never run, so neither a tried change nor
    a streak dates the backlog; the latest snapshot showing it does (never a blank age)."""
    env = sqlite_env
    env.shop.members("u1", "u2")
    with freeze_time("2026-11-22 09:00:00", real_asyncio=True):
        assert env.run(env.config(audiences=audience_toml("Buyers", ["nat"]))).exit_code == 0
    config = env.config(audiences=audience_toml("Buyers", ["nat", "usercom"]))  # usercom added
    rows = {r["destination"]: r for r in rows_at(config, "2026-11-22 09:30:00")}
    assert (rows["usercom"]["pending"], rows["usercom"]["last_run_id"]) == (2, None)
    assert rows["usercom"]["oldest_pending_at"] == "2026-11-22T09:00:00Z"
    assert rows["usercom"]["oldest_pending_age_seconds"] == 1800
    assert rows["nat"]["oldest_pending_at"] is None and rows["nat"]["pending"] == 0
    table = status.format_status(list(rows.values())).splitlines()
    assert table[0].split() == ["audience", "destination", "members", "acknowledged", "pending",
                                "oldest_pending", "eta", "skipped", "failed", "last_run", "duration",
                                "last_outcome"]
    assert table[2].split()[:6] == ["buyers", "usercom", "2", "0", "2", "30m0s"]


def test_a_run_in_progress_is_seen_from_another_process(sqlite_env: Env) -> None:
    """`status` in another process while `run-once` is held inside its second page (Nat's
    stand-in waits for the test): the run, how far it got per pair (the first page of 500 is
    acknowledged); then the last run's start (as `history`) and duration once it ended."""
    env = sqlite_env
    env.shop.members(*(f"u{i:03d}" for i in range(501)))
    path = env.write_config(audiences=audience_toml("Buyers", ["nat"]), nat_timeout="60s")
    path.write_text(path.read_text().replace('timeout = "60s"', 'timeout = "60s"\nrate_limit = 1000'))
    release = threading.Event()
    env.nat.after_accept = lambda n: release.wait(60) if n == 501 else None
    process = env.spawn("run-once", config=path)

    def rows() -> list[dict[str, Any]]:
        return list(json.loads(env.cli("status", "--json", "--config", str(path)).stdout))

    try:
        wait_for(lambda: env.nat.accepted_calls == 501, timeout=120, what="the second page's call")
        (during,) = rows()
        text = env.cli("status", "--config", str(path)).stdout
    finally:
        release.set()
        process.communicate(timeout=120)
    going = during["run_in_progress"]
    assert (going["run_id"], going["pid"], going["snapshots_taken"], going["audiences"]) == (
        1, process.pid, 1, 1)
    assert (going["acknowledged"], during["pending"], during["last_run_at"]) == (500, 1, None)
    assert f"run 1 in progress since {going['started_at']} (" in text and f"pid {process.pid} on " in text
    assert "  buyers -> nat: 500 acknowledged so far, 1 pending" in text

    (after,) = rows()
    history = json.loads(env.cli("history", "--json", "--config", str(path)).stdout)[0]
    assert process.returncode == 0 and after["run_in_progress"] is None
    assert after["last_run_at"] == history["started_at"]  # the start, as `history` shows it
    assert after["last_run_duration_seconds"] == round(history["duration_seconds"])
    assert "in progress" not in env.cli("status", "--config", str(path)).stdout


def test_the_next_run_of_a_daemon_from_another_process(sqlite_env: Env) -> None:
    """`syncd run` tells the state when its scheduler starts the next run; `status` shows it
    from any process, and stops showing it once the daemon stopped."""
    env = sqlite_env
    env.shop.members("u1")
    path = env.write_config(extra='\n[schedule]\ninterval = "1h"\njitter = "0s"\nrun_at_start = false\n')
    before = datetime.now(UTC)
    process = start_daemon(env, path)

    def row() -> dict[str, Any]:
        """The row, once the daemon has created the state (a status racing its first migration
        can fail: then nothing yet)."""
        result = env.cli("status", "--json", "--config", str(path))
        return dict(json.loads(result.stdout)[0]) if result.returncode == 0 else {}

    try:
        wait_for(lambda: row().get("next_run_at") is not None, what="the daemon's next run")
        seen = row()
        text = env.cli("status", "--config", str(path)).stdout
    finally:
        stop_daemon(process)
    at = datetime.strptime(seen["next_run_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert before + timedelta(minutes=59) < at <= datetime.now(UTC) + timedelta(hours=1)  # one interval on
    assert seen["next_run_by"]["pid"] == process.pid
    assert f"next run: {seen['next_run_at']} (`syncd run`, pid {process.pid} on " in text
    gone = env.cli("status", "--config", str(path)).stdout
    assert "next run: none scheduled (no `syncd run` is running on this state database)" in gone
