"""plan, resync, failures, retry, history: real processes, real state databases, real servers."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import MetaData, create_engine, select, text
from test_source import PG_SLOW, SQLITE_SLOW, _sql

from syncd.dev.standins import Fault
from syncd.model import SnapshotRow
from syncd.state.diff import plan_counts
from syncd.state.engine import create_state_engine
from syncd.state.lease import acquire_lease, release_lease
from syncd.state.snapshots import SnapshotCounts, load_scratch, replace_members, scratch_members

from conftest import (
    NAT_KEY,
    POSTGRES_URL,
    USERCOM_KEY,
    Env,
    _fresh_postgres_database,
    audience_toml,
    wait_for,
)


def _flags(calls: list[dict[str, Any]], key: str = "buyers") -> dict[str, bool]:
    out = {}
    for call in calls:
        traits = call.get("traits", call)
        if key in traits:
            out[call.get("userId") or call.get("custom_id")] = traits[key]
    return out


def _state(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table of the state database."""
    engine = create_state_engine(url)
    try:
        meta = MetaData()
        meta.reflect(engine)
        with engine.connect() as conn:
            return {name: sorted(map(tuple, conn.execute(select(table))), key=repr)
                    for name, table in meta.tables.items()}
    finally:
        engine.dispose()


def _json(env: Env, *args: str) -> Any:
    result = env.cli(*args, "--json", "--config", str(env.tmp_path / "config.toml"))
    assert result.returncode == 0, result.stderr
    assert NAT_KEY not in result.stdout + result.stderr and USERCOM_KEY not in result.stdout + result.stderr
    return json.loads(result.stdout)


def _pair(plan: dict[str, Any], audience: str, destination: str) -> dict[str, Any]:
    item = next(a for a in plan["audiences"] if a["audience"] == audience)
    return next(d for d in item["destinations"] if d["destination"] == destination)


# --- plan --------------------------------------------------------------------------------


def test_plan_counts_what_a_run_would_send_and_changes_nothing(env: Env) -> None:
    config = env.config(extra="rate_limit = 2\n")  # lands in [destinations.usercom]
    env.shop.members("u1", "u2", "u3")
    env.run(config)
    env.nat.down = True
    env.shop.set(("u2", "u2@example.com"), ("u3", "u3@example.com"), ("u4", "u4@example.com"), ("u5", None))
    env.run(config)  # Nat misses u4's entry and u1's exit: both are retries now
    env.nat.down = False
    env.shop.set(("u2", "u2@example.com"), ("u3", "u3@example.com"), ("u4", "u4@example.com"), ("u5", None),
                 ("u6", "u6@example.com"))
    before, requests = _state(env.state_url), (env.nat.requests, env.usercom.requests)

    plan = _json(env, "plan")

    nat, usercom = _pair(plan, "buyers", "nat"), _pair(plan, "buyers", "usercom")
    assert (nat["entered"], nat["left"], nat["retries"], nat["skipped"]) == (2, 1, 2, 1)
    assert nat["samples"] == {"entered": ["u4", "u6"], "left": ["u1"]}
    assert (nat["sends"], nat["send_seconds"]) == (3, 0.1)  # Nat's default rate_limit: 20/s
    assert (usercom["entered"], usercom["left"], usercom["retries"]) == (1, 0, 0)
    assert usercom["samples"]["entered"] == ["u6"]
    assert (usercom["sends"], usercom["send_seconds"]) == (1, 0.5)  # rate_limit = 2/s
    assert next(a for a in plan["audiences"])["members"] == 5
    # Nothing was sent and not one row of the state database changed.
    assert (env.nat.requests, env.usercom.requests) == requests
    assert _state(env.state_url) == before

    human = env.cli("plan", "--config", str(env.tmp_path / "config.toml"))
    assert human.returncode == 0
    line = next(x for x in human.stdout.splitlines() if x.startswith("  nat: "))
    assert line.startswith("  nat: 2 true, 1 false (2 retries), 1 skipped (no email); 3 sends, about")
    assert line.endswith("at 20/s")
    assert "  usercom: 1 true, 0 false (0 retries), 0 skipped (no email); 1 send, about 1s at 2/s" \
        in human.stdout
    # The run that follows sends what the plan said.
    report = env.run(config)
    by_dest = {p.destination: (p.entered, p.left) for p in report.pairs}
    assert by_dest == {"nat": (2, 1), "usercom": (1, 0)}


def test_plan_reports_a_failing_query_and_goes_on(sqlite_env: Env) -> None:
    audiences = (audience_toml("Buyers", ["nat"])
                 + audience_toml("Broken", ["nat"], query="SELECT id AS user_id FROM no_such_table"))
    sqlite_env.write_config(audiences=audiences)
    sqlite_env.shop.members("u1")
    plan = _json(sqlite_env, "plan")
    broken = next(a for a in plan["audiences"] if a["audience"] == "broken")
    assert "no_such_table" in broken["error"]
    assert _pair(plan, "buyers", "nat")["entered"] == 1
    assert sqlite_env.nat.requests == 0


def _opened(pid: int, path: Path) -> bool:
    """Has process `pid` the file open (Linux: /proc/PID/fd)?"""
    with suppress(OSError):
        return any(os.readlink(f"/proc/{pid}/fd/{fd}") == str(path) for fd in os.listdir(f"/proc/{pid}/fd"))
    return False


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_plan_stops_promptly_on_a_signal_its_query_cancelled(sqlite_env: Env, signum: int) -> None:
    """As `run-once`: the running source query is cancelled (SQLite's interrupt), the process
    ends within seconds, not after the query, with one line; nothing was recorded."""
    env = sqlite_env
    with env.shop.connect() as db:
        db.execute("CREATE TABLE slowness (steps INTEGER)")
        db.execute("INSERT INTO slowness VALUES (2000000000)")  # minutes of counting
    env.shop.members("u1", "u2")
    path = env.write_config(audiences=audience_toml("Buyers", ["nat"], query=SQLITE_SLOW))
    process = env.spawn("plan", config=path)
    try:
        wait_for(lambda: _opened(process.pid, env.shop.path), what="plan to query the shop")
        time.sleep(0.5)
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=15)  # the query alone would take minutes
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert (process.returncode, stdout) == (1, ""), stderr
    assert stderr.splitlines()[-1] == ("ERROR plan stopped by the stop request: its queries were cancelled; "
                                       "nothing was sent or recorded")
    assert "Traceback" not in stderr and env.nat.requests == 0
    assert _state(env.state_url)["run"] == []


@pytest.fixture
def pg_source() -> Iterator[str]:
    """A fresh PostgreSQL database to use as a source."""
    if not POSTGRES_URL:
        pytest.skip("PostgreSQL source tests need SYNCD_TEST_POSTGRES_URL")
    yield from _fresh_postgres_database(POSTGRES_URL)


def test_plan_on_sigterm_cancels_a_postgresql_query_at_the_server(sqlite_env: Env, pg_source: str) -> None:
    env = sqlite_env
    _sql(pg_source, "CREATE TABLE people (id text, email text)", "CREATE TABLE slowness (seconds int)",
         "INSERT INTO slowness VALUES (600)", "INSERT INTO people VALUES ('u1', 'u1@example.com')")
    audiences = audience_toml("Buyers", ["nat"], query=PG_SLOW).replace('source = "shop"', 'source = "pg"')
    path = env.write_config(audiences=audiences, extra=f'\n[sources.pg]\nurl = "{pg_source}"\n')
    watcher = create_engine(pg_source)

    def sleeping() -> bool:
        with watcher.connect() as conn:
            return bool(conn.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE wait_event = "
                                         "'PgSleep' AND datname = current_database()")))

    process = env.spawn("plan", config=path)
    try:
        wait_for(sleeping, what="plan's query to run")
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=15)
        wait_for(lambda: not sleeping(), timeout=10, what="the query to be cancelled at the server")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        watcher.dispose()
    assert process.returncode == 1 and "plan stopped by the stop request" in stderr, stderr


def test_plan_needs_no_lease_and_blocks_no_run(env: Env) -> None:
    """plan's snapshot goes to a temporary table: a run writing the real one at the
    same moment is not kept waiting (a rolled-back write to `member` would lock it)."""
    config = env.config()
    env.shop.members("u1", "u2")
    env.run(config)
    engine = create_state_engine(env.state_url)
    other = create_state_engine(env.state_url)
    try:
        with engine.connect() as conn, scratch_members(conn) as scratch:  # plan, mid-plan
            rows = [SnapshotRow.of(f"p{i}") for i in range(10)]
            load_scratch(conn, scratch, "buyers", rows, SnapshotCounts())
            assert plan_counts(conn, "buyers", "usercom", False, scratch).entered == 10

            done = threading.Event()

            def concurrent_run_snapshot() -> None:
                replace_members(other, "buyers", [SnapshotRow.of("u3")],
                                       SnapshotCounts())
                done.set()

            thread = threading.Thread(target=concurrent_run_snapshot, daemon=True)
            thread.start()
            assert done.wait(5), "the concurrent snapshot waited for plan's transaction"
        env.shop.members("u1", "u2", "u3", "u4")
        lease = acquire_lease(engine)  # a run in progress does not stop a plan
        try:
            assert _pair(_json(env, "plan"), "buyers", "nat")["entered"] == 2
        finally:
            release_lease(engine, lease)
    finally:
        engine.dispose()
        other.dispose()


# --- resync ------------------------------------------------------------------------------


def test_resync_sends_the_full_state_again_now(env: Env) -> None:
    config = env.config()
    env.shop.members("u1", "u2", "u3")
    env.run(config)
    env.nat.down = True
    env.shop.members("u1", "u2")
    env.run(config)  # u3's exit did not reach Nat
    env.nat.down = False
    env.nat.reset()
    env.usercom.reset()  # User.com lost everything, the attribute too

    result = env.cli("resync", "--audience", "buyers", "--config", str(env.tmp_path / "config.toml"))

    assert result.returncode == 0, result.stderr
    assert _flags(env.nat.accepted()) == {"u1": True, "u2": True, "u3": False}
    assert {c: u["attributes"]["buyers"] for c, u in env.usercom.users().items()} == {"u1": True, "u2": True}
    assert [a["value_type"] for a in env.usercom.attributes() if a["name"] == "buyers"] == ["boolean"]
    # Said once (in the log, as every run ends), and as what it is: values sent again.
    assert result.stdout == ""
    summary = [line for line in result.stderr.splitlines() if "resync buyers at" in line]
    assert summary == [
        "INFO resync buyers at nat: 3 acknowledged users marked to be sent again",
        "INFO resync buyers at usercom: 2 acknowledged users marked to be sent again",
        "INFO resync buyers at nat: resent 2 (true) / 1 (false), 3 acknowledged, 0 skipped (no email), "
        "0 failed, 0 pending: ok",
        "INFO resync buyers at usercom: resent 2 (true) / 0 (false), 2 acknowledged, 0 skipped (no email), "
        "0 failed, 0 pending: ok",
    ]
    assert "entered" not in result.stderr
    # The marks are used up: the next run has nothing to send.
    assert all(p.sent == 0 for p in env.run(config).pairs)


def test_resync_of_one_destination_leaves_the_other_alone(sqlite_env: Env) -> None:
    sqlite_env.shop.members("u1", "u2")
    sqlite_env.run()
    sqlite_env.nat.reset()
    sqlite_env.usercom.reset()
    result = sqlite_env.cli("resync", "--audience", "buyers", "--destination", "nat", "--json",
                            "--config", str(sqlite_env.tmp_path / "config.toml"))
    assert result.returncode == 0, result.stderr
    assert [p["destination"] for p in json.loads(result.stdout)["pairs"]] == ["nat"]
    assert _flags(sqlite_env.nat.accepted()) == {"u1": True, "u2": True}
    assert sqlite_env.usercom.requests == 0


def test_resync_during_another_run_keeps_its_marks_for_the_next_run(sqlite_env: Env) -> None:
    env = sqlite_env
    config = env.config(audiences=audience_toml("Buyers", ["nat"]))
    env.shop.members("u1", "u2")
    env.run(config)
    env.nat.reset()
    engine = create_state_engine(env.state_url)
    lease = acquire_lease(engine)
    try:
        busy = env.cli("resync", "--audience", "buyers", "--config", str(env.tmp_path / "config.toml"))
        busy_json = env.cli("resync", "--audience", "buyers", "--json", "--config",
                            str(env.tmp_path / "config.toml"))
    finally:
        release_lease(engine, lease)
        engine.dispose()
    assert busy.returncode == 1
    assert "another run is in progress" in busy.stderr and "the next run sends them" in busy.stderr
    data = json.loads(busy_json.stdout)
    assert busy_json.returncode == 1 and "another run is in progress" in data.pop("error")
    assert data == {"run_id": None, "outcome": "skipped", "pairs": [], "audience_errors": {}}
    assert env.nat.requests == 0

    assert env.run(config).exit_code == 0
    assert _flags(env.nat.accepted()) == {"u1": True, "u2": True}


def test_commands_reject_unknown_names_with_one_line_before_any_io(sqlite_env: Env) -> None:
    path = str(sqlite_env.write_config(audiences=audience_toml("Buyers", ["nat"])))
    cases = [
        (("resync", "--audience", "sellers"), "unknown audience 'sellers' (audience keys: buyers)"),
        (("resync", "--audience", "buyers", "--destination", "hubspot"), "unknown destination 'hubspot'"),
        (("resync", "--audience", "buyers", "--destination", "usercom"),
         "audience 'buyers' is not sent to 'usercom' (its destinations: nat)"),
        (("approve", "--audience", "sellers"), "unknown audience 'sellers'"),
        (("failures", "--destination", "hubspot"), "unknown destination 'hubspot'"),
        (("retry", "--destination", "hubspot"), "unknown destination 'hubspot'"),
    ]
    for args, message in cases:
        result = sqlite_env.cli(*args, "--config", path)
        assert result.returncode == 2, args
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"syncd: {message}"), result.stderr
    assert not (sqlite_env.tmp_path / "state.db").exists()
    bad_limit = sqlite_env.cli("history", "--limit", "0", "--config", path)
    assert bad_limit.returncode == 2 and "not a positive whole number" in bad_limit.stderr


# --- failures and retry ------------------------------------------------------------------


def test_failures_groups_rejections_by_reason_and_retry_sends_them_now(env: Env) -> None:
    config = env.config()
    env.shop.members("u1", "u2", "u3", "u4")
    env.nat.fail_next(2, Fault(400, body='{"error": "email is not valid"}'))
    env.nat.fail_next(1, Fault(422, body='{"error": "blocked"}'))
    report = env.run(config)
    assert report.exit_code == 1
    message = report.pairs[0].message or ""  # the user as a person names them, not the ledger
    assert message.startswith("user u") and ": HTTP 4" in message and "u:" not in message, message

    groups = _json(env, "failures")

    rows = [(g["destination"], g["audience"], g["status"], g["reason"], g["count"]) for g in groups]
    assert sorted(rows) == [
        ("nat", "buyers", 400, "HTTP 400 Bad Request: email is not valid", 2),
        ("nat", "buyers", 422, "HTTP 422 Unprocessable Entity: blocked", 1),
    ]
    failed = {u for g in groups for u in g["samples"]}
    assert len(failed) == 3 and failed < {"u1", "u2", "u3", "u4"}
    assert _json(env, "failures", "--destination", "usercom") == []
    human = env.cli("failures", "--config", str(env.tmp_path / "config.toml")).stdout
    assert "nat / buyers: 2 rejected: HTTP 400 Bad Request: email is not valid; e.g. " in human

    usercom_before = env.usercom.requests
    retried = env.cli("retry", "--json", "--config", str(env.tmp_path / "config.toml"))

    assert retried.returncode == 0, retried.stderr
    data = json.loads(retried.stdout)
    assert data["requeued"] == 3 and data["outcome"] == "ok"
    assert [(p["destination"], p["acknowledged"]) for p in data["pairs"]] == [("nat", 3)]
    assert env.usercom.requests == usercom_before  # only the pairs with failures ran
    assert _flags(env.nat.accepted()) == {u: True for u in ("u1", "u2", "u3", "u4")}
    assert _json(env, "failures") == []


def test_retry_with_nothing_failed_runs_nothing(sqlite_env: Env) -> None:
    sqlite_env.shop.members("u1")
    sqlite_env.run()
    requests = sqlite_env.nat.requests
    result = sqlite_env.cli("retry", "--config", str(sqlite_env.tmp_path / "config.toml"))
    assert (result.returncode, result.stdout.strip()) == (0, "no failed changes to retry")
    assert sqlite_env.nat.requests == requests
    # A script reads the same fields as after a run (SPEC 3), even with nothing to do.
    assert _json(sqlite_env, "retry") == {"requeued": 0, "run_id": None, "outcome": "ok", "pairs": [],
                                          "audience_errors": {}}


def test_a_change_rejected_again_shows_the_new_reason(sqlite_env: Env) -> None:
    sqlite_env.shop.members("u1")
    sqlite_env.nat.fail_next(1, Fault(400, body='{"error": "first"}'))
    sqlite_env.run()
    sqlite_env.nat.fail_next(1, Fault(400, body='{"error": "second"}'))
    path = str(sqlite_env.tmp_path / "config.toml")
    result = sqlite_env.cli("retry", "--destination", "nat", "--config", path)
    assert result.returncode == 1
    assert [g["reason"] for g in _json(sqlite_env, "failures")] == ["HTTP 400 Bad Request: second"]


# --- history and status ------------------------------------------------------------------


def test_history_lists_recent_runs_with_their_totals(env: Env) -> None:
    path = str(env.write_config())
    assert env.cli("history", "--config", path).stdout.strip() == "no runs yet"
    config = env.config()
    env.shop.members("u1", "u2")
    env.run(config)
    env.nat.down = True
    env.shop.members("u2", "u3")
    env.run(config)

    runs = _json(env, "history")

    assert [r["outcome"] for r in runs] == ["undelivered", "ok"]  # newest first
    latest, first = runs
    assert [first[k] for k in ("entered", "left", "sent", "acknowledged", "failed")] == [4, 0, 4, 4, 0]
    assert (latest["entered"], latest["left"], latest["acknowledged"], latest["pending"]) == (2, 2, 2, 2)
    assert latest["run_id"] > first["run_id"] and latest["duration_seconds"] >= 0
    assert [r["run_id"] for r in _json(env, "history", "--limit", "1")] == [latest["run_id"]]
    human = env.cli("history", "--config", path).stdout.splitlines()
    assert human[0].split() == ["run", "started", "duration", "outcome", "entered", "left", "sent",
                                "acknowledged", "skipped", "failed", "pending", "held"]
    assert human[1].split()[3] == "undelivered" and len(human) == 3


def test_json_field_names_are_the_same_across_commands(sqlite_env: Env) -> None:
    env = sqlite_env
    env.shop.members("u1", "u2")
    env.nat.fail_next(1, Fault(400, body='{"error": "no"}'))
    env.run()
    outputs = {
        "status": _json(env, "status"), "plan": _json(env, "plan"), "history": _json(env, "history"),
        "failures": _json(env, "failures"), "retry": _json(env, "retry"),
        "resync": _json(env, "resync", "--audience", "buyers"),
        "approve": _json(env, "approve", "--audience", "buyers"),
    }
    # One name per concept: the old spellings are gone from every command.
    old = {"audience_key", "run", "true", "false", "skipped_no_email", "duration_s", "last_run",
           "oldest_pending"}
    for command, data in outputs.items():
        assert not _keys(data) & old, (command, _keys(data) & old)
    assert outputs["status"][0]["audience"] == outputs["failures"][0]["audience"] == "buyers"
    assert outputs["resync"]["pairs"][0]["audience"] == outputs["approve"][0]["audience"] == "buyers"
    run_ids = [outputs["history"][0]["run_id"], outputs["retry"]["run_id"], outputs["resync"]["run_id"]]
    assert run_ids[0] == outputs["status"][0]["last_run_id"] and run_ids[1] < run_ids[2]


def _keys(data: Any) -> set[str]:
    if isinstance(data, dict):
        return set(data) | {k for v in data.values() for k in _keys(v)}
    if isinstance(data, list):
        return {k for v in data for k in _keys(v)}
    return set()
