"""Faults users meet: killed processes, outages, slow and broken destinations, broken sources.

Each test ends by checking the promise: every destination holds exactly the source's
membership, and no destination ever saw a stale value after a newer one.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess

import pytest
from freezegun import freeze_time

from syncd.dev.standins import Fault

from checks import assert_no_stale_values, flags, usercom_view, view
from conftest import Env, audience_toml, dump_state, wait_for

SLOW_QUERY = """
SELECT id AS user_id, email FROM customers
WHERE (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 4000000)
       SELECT count(*) FROM n) > 0
"""


def _users(n: int) -> list[str]:
    return [f"u{i:03d}" for i in range(n)]


def _converged(env: Env, members: set[str], universe: set[str]) -> None:
    """Both destinations hold exactly `members`; Nat never saw a stale value."""
    calls = env.nat.accepted()
    assert view(calls, universe) == members
    assert usercom_view(env.usercom, universe) == members
    assert_no_stale_values(calls)


def _killed(process: subprocess.Popen[str]) -> None:
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL


# --- SIGKILL at any point of a run --------------------------------------------------------


@pytest.mark.parametrize("applied", [True, False], ids=["after-2xx-before-commit", "in-flight"])
def test_sigkill_during_delivery_resends_only_with_the_same_message_id(env: Env, applied: bool) -> None:
    users = _users(40)
    env.shop.members(*users)
    env.write_config()
    process: subprocess.Popen[str] | None = None

    def kill(count: int) -> None:  # in the stand-in, before it answers the 10th call
        if count == 10 and process is not None:
            os.kill(process.pid, signal.SIGKILL)

    if applied:
        env.nat.after_accept = kill
    else:  # the calls hang unanswered (and unapplied) while the process dies
        env.nat.fail_next(8, Fault(503, delay=3))
    process = env.spawn()
    if not applied:
        wait_for(lambda: env.nat.requests >= 8, what="8 requests in flight")
        process.kill()
    _killed(process)
    env.nat.heal()

    report = env.run()

    assert report.exit_code == 0
    _converged(env, set(users), set(users))
    ids = {}
    for call in env.nat.accepted():
        assert ids.setdefault(call["userId"], call["messageId"]) == call["messageId"]


def test_sigkill_during_the_snapshot_keeps_the_previous_snapshot(env: Env) -> None:
    env.shop.members("u1", "u2")
    path = env.write_config(audiences=audience_toml("Buyers", ["nat", "usercom"], query=SLOW_QUERY))
    env.run(env.config(audiences=audience_toml("Buyers", ["nat", "usercom"], query=SLOW_QUERY)))
    env.shop.members("u2", "u3")

    process = env.spawn(config=path)
    wait_for(lambda: dump_state(env.state_url).count("'running'") == 1, what="the run to start")
    process.kill()
    _killed(process)
    state = dump_state(env.state_url)
    assert "u:u1" in state and "u:u3" not in state  # the half-read snapshot was rolled back

    assert env.run(env.config(audiences=audience_toml("Buyers", ["nat", "usercom"],
                                                      query=SLOW_QUERY))).exit_code == 0
    _converged(env, {"u2", "u3"}, {"u1", "u2", "u3"})


def test_sigkill_while_leaves_are_in_flight_then_a_user_re_enters(env: Env) -> None:
    users = _users(20)
    env.shop.members(*users)
    env.run()
    env.shop.members(*users[10:])  # ten leave
    env.write_config()
    process: subprocess.Popen[str] | None = None

    def kill(count: int) -> None:
        if count == 20 + 4 and process is not None:
            os.kill(process.pid, signal.SIGKILL)

    env.nat.after_accept = kill
    process = env.spawn()
    _killed(process)
    env.nat.heal()
    env.shop.members(users[0], *users[10:])  # u000 comes back: its `false` may have landed

    assert env.run().exit_code == 0
    _converged(env, {users[0], *users[10:]}, set(users))


# --- SIGTERM: stop within seconds, keep what was acknowledged ------------------------------


def test_sigterm_during_delivery_records_what_was_acknowledged(sqlite_env: Env) -> None:
    env = sqlite_env
    users = _users(150)
    env.shop.members(*users)
    env.nat.delay = 0.2  # about 40 calls a second with 8 at a time
    path = env.write_config(audiences=audience_toml("Buyers", ["nat"]))
    process = env.spawn(config=path)
    wait_for(lambda: len(env.nat.accepted()) >= 30, what="30 accepted calls")
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=5)

    assert process.returncode == 1, stderr
    assert "stopped by signal" in stderr and "Traceback" not in stderr
    status = json.loads(env.cli("status", "--json", "--config", str(path)).stdout)[0]
    received = len(env.nat.accepted())
    assert received < len(users)
    assert status["acknowledged"] == received  # every answered call was recorded
    assert status["pending"] == len(users) - received

    env.nat.heal()
    assert env.cli("run-once", "--config", str(path)).returncode == 0
    calls = env.nat.accepted()
    assert len(calls) == len({c["messageId"] for c in calls}) == len(users)


# --- a destination down for days ----------------------------------------------------------


def test_destination_down_for_days_keeps_a_backlog_and_catches_up(env: Env) -> None:
    universe = {"u1", "u2", "u3", "u4", "u5"}
    with freeze_time("2026-11-20 09:00:00", real_asyncio=True):
        env.shop.members("u1", "u2")
        env.run()
    env.nat.down = True
    for day, members in enumerate([("u2", "u3"), ("u3", "u4"), ("u1", "u4", "u5")], start=21):
        with freeze_time(f"2026-11-{day} 09:00:00", real_asyncio=True):
            env.shop.members(*members)
            report = env.run()
        assert report.exit_code == 1
        assert usercom_view(env.usercom, universe) == set(members)  # Usercom keeps syncing

    path = env.write_config()
    rows = {r["destination"]: r for r in json.loads(env.cli("status", "--json", "--config",
                                                            str(path)).stdout)}
    # u2 leaves, u4 and u5 enter (u1 is back as it was; u3 came and went): 3 pending.
    assert rows["nat"]["pending"] == 3 and rows["usercom"]["pending"] == 0
    # Nat has had undelivered work since the first run it missed, on the 21st (u1's leave of
    # then went away when u1 came back; u2's, the oldest still to send, waits since the 22nd).
    assert rows["nat"]["oldest_pending_at"] == "2026-11-21T09:00:00Z"
    assert rows["nat"]["oldest_pending_age_seconds"] > 0
    assert rows["usercom"]["oldest_pending_at"] is None

    env.nat.down = False
    assert env.run().exit_code == 0
    _converged(env, {"u1", "u4", "u5"}, universe)
    assert "u3" not in flags(env.nat.accepted())  # came and went while Nat was down


def test_leave_and_re_enter_while_down_sends_nothing(env: Env) -> None:
    env.shop.members("u1", "u2")
    env.run()
    env.nat.down = True
    env.shop.members("u2")
    env.run()
    env.shop.members("u1", "u2")
    env.nat.down = False
    sent = len(env.nat.accepted())

    assert env.run().exit_code == 0
    assert len(env.nat.accepted()) == sent
    _converged(env, {"u1", "u2"}, {"u1", "u2"})


# --- rate limits, timeouts, broken networks, broken bodies ----------------------------------


def test_429_storm_without_retry_after_ends_the_run_in_bounded_time(env: Env) -> None:
    users = _users(30)
    env.shop.members(*users)
    env.nat.fail_next(10_000, Fault(429, body='{"error": "slow down"}'))

    report = env.run()

    nat = next(p for p in report.pairs if p.destination == "nat")
    assert report.exit_code == 1 and nat.pending == 30
    assert "set aside" in (nat.message or "") and "429" in (nat.message or "")
    assert env.nat.requests <= 30 * 3  # bounded: at most 3 attempts per change, then set aside
    env.nat.heal()
    assert env.run().exit_code == 0
    _converged(env, set(users), set(users))


def test_429_storm_with_long_retry_after_sets_the_destination_aside(env: Env) -> None:
    env.shop.members("u1", "u2")
    env.nat.fail_next(10_000, Fault(429, retry_after="3600"))

    report = env.run()

    nat = next(p for p in report.pairs if p.destination == "nat")
    assert "asked to wait 3600s" in (nat.message or "")
    assert next(p for p in report.pairs if p.destination == "usercom").outcome == "ok"


def test_429_with_retry_after_pauses_everyone_then_delivers(env: Env) -> None:
    users = _users(12)
    env.shop.members(*users)
    env.nat.fail_next(2, Fault(429, retry_after="1"))  # fewer than the 3 attempts of one change

    assert env.run().exit_code == 0
    _converged(env, set(users), set(users))


def test_timeouts_leave_the_change_uncertain_and_a_later_leave_is_still_sent(env: Env) -> None:
    env.shop.members("u1", "u2")
    env.run()
    env.shop.members("u1", "u2", "u3")
    env.nat.delay = 1.5  # applied, but the answer comes after the 1 s timeout
    config = env.config(nat_timeout="1s")

    report = env.run(config)

    nat = next(p for p in report.pairs if p.destination == "nat")
    assert report.exit_code == 1 and "ReadTimeout" in (nat.message or "")
    assert flags(env.nat.accepted())["u3"] is True  # it landed, we could not know
    env.nat.heal()
    env.shop.members("u1", "u2")  # u3 leaves before we ever saw an acknowledgement
    assert env.run().exit_code == 0
    _converged(env, {"u1", "u2"}, {"u1", "u2", "u3"})


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("fault", ["connection refused", "TLS", "DNS"])
def test_unreachable_destination_waits_and_the_other_goes_on(sqlite_env: Env, fault: str) -> None:
    env = sqlite_env
    endpoint = {
        "connection refused": f"http://127.0.0.1:{_closed_port()}/segment",
        "TLS": env.nat.endpoint.replace("http://", "https://"),  # TLS to a plain HTTP port
        "DNS": "http://nat.invalid/segment",
    }[fault]
    env.shop.members("u1", "u2")

    report = env.run(env.config(nat_endpoint=endpoint))

    nat = next(p for p in report.pairs if p.destination == "nat")
    assert report.exit_code == 1 and nat.outcome == "undelivered" and nat.pending == 2
    assert "ConnectError" in (nat.message or "") and "\n" not in (nat.message or "")
    assert next(p for p in report.pairs if p.destination == "usercom").outcome == "ok"
    assert env.run().exit_code == 0  # the right endpoint: catches up
    _converged(env, {"u1", "u2"}, {"u1", "u2"})


def test_html_and_empty_bodies(env: Env) -> None:
    env.shop.members("u1", "u2", "u3")
    env.nat.fail_next(1, Fault(502, body="<html><body><h1>502 Bad Gateway</h1></body></html>"))
    env.nat.fail_next(1, Fault(200, body=""))  # a 2xx with no body is still an acknowledgement
    env.usercom.fail_next(1, Fault(200, body="<html>login</html>"))  # listing attributes

    report = env.run()

    usercom = next(p for p in report.pairs if p.destination == "usercom")
    assert usercom.outcome == "undelivered" and "not JSON" in (usercom.message or "")
    nat = next(p for p in report.pairs if p.destination == "nat")
    assert (nat.outcome, nat.acknowledged) == ("ok", 3)  # the 502 was retried; the empty 200 counts
    assert env.run().exit_code == 0
    assert usercom_view(env.usercom, {"u1", "u2", "u3"}) == {"u1", "u2", "u3"}


# --- sources that fail --------------------------------------------------------------------


def test_unreachable_source_fails_that_audience_only(sqlite_env: Env) -> None:
    env = sqlite_env
    extra = '\n[sources.warehouse]\nurl = "postgresql+psycopg://nobody@127.0.0.1:1/warehouse"\n'
    audiences = audience_toml("Buyers", ["nat"]) + audience_toml("Churned", ["nat"]).replace(
        'source = "shop"', 'source = "warehouse"')
    env.shop.members("u1")
    path = env.write_config(audiences=audiences, extra=extra)

    result = env.cli("run-once", "--config", str(path))

    assert result.returncode == 1
    line = next(x for x in result.stderr.splitlines() if "audience churned" in x)
    assert "source 'warehouse'" in line and "127.0.0.1" in line
    assert "Traceback" not in result.stderr
    assert flags(env.nat.accepted()) == {"u1": True}
