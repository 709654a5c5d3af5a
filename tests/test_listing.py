"""Learning User.com's ids in bulk (issue 17): a first sync of users User.com already has lists
its users (GET users/, cursor pages of 100), keeps every id under its custom id and sends
those members in mass updates; only the users it lacks are created one by one. The listing
happens only when it pays, is paced and retried like a send, and a listing cut short keeps
what it learned. Checked on User.com's own view (the stand-in's users) and its calls per
endpoint, against real SQLite and PostgreSQL state."""

from __future__ import annotations

import json
import logging
import os
import signal
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, text

from syncd.cli.progress import LogLines
from syncd.dev.standins import Fault, UserComStandIn
from syncd.run.pipeline import Options, open_state, run_once
from syncd.state.engine import create_state_engine
from syncd.state.tables import LISTING, REMOTE_ID

from conftest import FAST, USERCOM_KEY, Env, audience_toml, wait_for

PLAIN = audience_toml("Buyers", ["usercom"], query="SELECT id AS user_id, email FROM customers")
FAST_USERCOM = "rate_limit = 1000\nconcurrency = 8\n"  # lands in [destinations.usercom]
MEMBERS = [f"m{i:04d}" for i in range(2000)]
EXISTING = MEMBERS[::4] + MEMBERS[1::4] + MEMBERS[2::4]  # 1,500 of them, in another order


def _state_rows(env: Env, query: object) -> list[tuple[object, ...]]:
    engine = create_state_engine(env.state_url)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(query)]  # type: ignore[call-overload]
    finally:
        engine.dispose()


def remote_ids(env: Env) -> dict[str, int | None]:
    rows = _state_rows(env, select(REMOTE_ID.c.subject, REMOTE_ID.c.remote_id)
                       .where(REMOTE_ID.c.destination == "usercom"))
    return {str(subject): remote_id for subject, remote_id in rows}  # type: ignore[misc]


def listing_row(env: Env) -> tuple[object, ...] | None:
    rows = _state_rows(env, select(LISTING.c.users, LISTING.c.listed, LISTING.c.cursor)
                       .where(LISTING.c.destination == "usercom"))
    return rows[0] if rows else None


def holding(usercom: UserComStandIn, key: str = "buyers") -> dict[str, bool]:
    """custom_id -> the audience's attribute, for the users that hold it."""
    return {user: data["attributes"][key] for user, data in usercom.users().items()
            if key in data["attributes"]}


def calls_since(usercom: UserComStandIn, before: dict[str, int]) -> dict[str, int]:
    now = usercom.calls()
    return {name: now[name] - before.get(name, 0) for name in now if now[name] - before.get(name, 0)}


@pytest.fixture(params=["custom_id", "user_id"])
def id_field(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def crm(env: Env, id_field: str) -> Iterator[Env]:
    """The env with a User.com whose listing names the custom id `id_field`."""
    with UserComStandIn(USERCOM_KEY, id_field=id_field) as usercom:
        yield Env(env.tmp_path, env.state_url, env.shop, env.nat, usercom)


def test_a_first_sync_of_users_user_com_has_goes_out_in_mass_updates(crm: Env) -> None:
    crm.usercom.seed_users(EXISTING)  # the CRM's users, created before syncd ever ran
    crm.shop.members(*MEMBERS)
    config = crm.config(audiences=PLAIN, extra=FAST_USERCOM)

    report = crm.run(config)

    assert report.exit_code == 0
    # 15 pages list the 1,500 users; 15 mass updates carry them; the 500 others are created.
    assert crm.usercom.calls() == {"listing": 15, "mass_update": 15, "update_or_create": 500,
                                   "attributes": 2, "other": 0}
    assert report.calls["usercom"] == 530
    assert holding(crm.usercom) == dict.fromkeys(MEMBERS, True)
    assert len(crm.usercom.users()) == 2000
    ids = remote_ids(crm)
    assert ids == {f"u:{user}": data["id"] for user, data in crm.usercom.users().items()}
    assert listing_row(crm) == (1500, 1500, None)

    before = crm.usercom.calls()
    assert crm.run(config).exit_code == 0
    assert calls_since(crm.usercom, before) == {}  # settled: the second run sends nothing


def test_a_few_new_users_on_a_big_user_com_never_list_it_all(sqlite_env: Env) -> None:
    env = sqlite_env
    env.usercom.seed_users(f"crm{i}" for i in range(20_000))
    env.shop.members(*(f"new{i}" for i in range(5)))
    config = env.config(audiences=PLAIN, extra=FAST_USERCOM)

    assert env.run(config).exit_code == 0

    # The first page tells the cost (200 pages for 5 users): not worth it.
    assert env.usercom.calls()["listing"] == 1
    assert env.usercom.calls()["update_or_create"] == 5
    assert holding(env.usercom) == dict.fromkeys((f"new{i}" for i in range(5)), True)
    env.shop.members(*(f"new{i}" for i in range(10)))
    assert env.run(config).exit_code == 0
    assert env.usercom.calls()["listing"] == 1  # the size is known now: not even a first page
    assert env.usercom.calls()["update_or_create"] == 10


def test_resync_of_known_users_goes_in_mass_updates(env: Env) -> None:
    users = [f"k{i:04d}" for i in range(1000)]
    env.shop.members(*users)
    config = env.config(audiences=PLAIN, extra=FAST_USERCOM)
    assert env.run(config).exit_code == 0  # their ids are learned (listing or answers)
    before = env.usercom.calls()

    done = env.cli("resync", "--audience", "buyers", "--destination", "usercom", "--json",
                   "--config", str(env.tmp_path / "config.toml"))

    assert done.returncode == 0, done.stderr
    assert calls_since(env.usercom, before) == {"mass_update": 10, "attributes": 1}  # and the check
    assert holding(env.usercom) == dict.fromkeys(users, True)


def test_a_listing_killed_midway_keeps_its_ids_and_goes_on(env: Env) -> None:
    env.usercom.seed_users(EXISTING)
    env.shop.members(*MEMBERS)
    env.write_config(audiences=PLAIN, extra="rate_limit = 2\n")  # 2 pages a second: time to kill it
    process = env.spawn()
    wait_for(lambda: env.usercom.calls()["listing"] >= 6, what="six listing pages")
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL
    learned = {s: i for s, i in remote_ids(env).items() if i is not None}
    assert len(learned) >= 500  # every page before the kill is kept, with its cursor
    users, listed, cursor = listing_row(env) or (None, None, None)
    assert (users, cursor is not None) == (1500, True) and listed == len(learned)
    assert env.usercom.calls()["mass_update"] == env.usercom.calls()["update_or_create"] == 0
    listed_before = env.usercom.calls()["listing"]

    report = env.run(env.config(audiences=PLAIN, extra=FAST_USERCOM))

    assert report.exit_code == 0
    assert holding(env.usercom) == dict.fromkeys(MEMBERS, True)
    calls = env.usercom.calls()
    # It went on from its cursor: the pages before the kill were not listed again.
    assert calls["listing"] - listed_before == 15 - len(learned) // 100
    assert (calls["mass_update"], calls["update_or_create"]) == (15, 500)
    assert learned.items() <= remote_ids(env).items()  # the ids learned before the kill are kept
    values = [body.get("value", body.get("buyers")) for body in env.usercom.accepted() if "name" not in body]
    assert set(values) == {True}  # nothing was ever sent with another value


def test_a_saved_cursor_user_com_no_longer_knows_restarts_the_listing(env: Env) -> None:
    env.usercom.seed_users(EXISTING)
    env.shop.members(*MEMBERS)
    config = env.config(audiences=PLAIN, extra=FAST_USERCOM)
    engine = open_state(config)  # the schema, then a listing cut short whose cursor has expired
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO listing (destination, users, listed, cursor) "
                          "VALUES ('usercom', 1500, 700, 'cursor=ZXhwaXJlZA%3D%3D&page_size=100')"))
    engine.dispose()

    assert env.run(config).exit_code == 0

    assert env.usercom.calls() == {"listing": 1 + 15, "mass_update": 15, "update_or_create": 500,
                                   "attributes": 2, "other": 0}  # the 404, then from the first page
    assert holding(env.usercom) == dict.fromkeys(MEMBERS, True)
    assert listing_row(env) == (1500, 1500, None)


def test_a_failing_listing_page_is_retried_like_a_send(sqlite_env: Env) -> None:
    env = sqlite_env
    env.usercom.seed_users(EXISTING)
    env.shop.members(*MEMBERS)
    env.usercom.fail_next(1, Fault(503, body="<html>busy</html>", route=UserComStandIn.LISTING))

    assert env.run(env.config(audiences=PLAIN, extra=FAST_USERCOM)).exit_code == 0

    assert env.usercom.calls()["listing"] == 16 and env.usercom.calls()["mass_update"] == 15


def test_a_listing_failing_all_run_leaves_the_sends_one_by_one(sqlite_env: Env) -> None:
    env = sqlite_env
    env.usercom.seed_users(EXISTING)
    env.shop.members(*MEMBERS[:300])
    env.usercom.fail_next(1_000, Fault(503, body="<html>down</html>", route=UserComStandIn.LISTING))

    report = env.run(env.config(audiences=PLAIN, extra=FAST_USERCOM))

    assert report.exit_code == 0  # the members still go, one call each (FAST: 3 attempts)
    assert env.usercom.calls()["listing"] == 3 and env.usercom.calls()["update_or_create"] == 300
    assert holding(env.usercom) == dict.fromkeys(MEMBERS[:300], True)


def test_a_refused_key_on_the_listing_stops_user_com_for_the_run(sqlite_env: Env) -> None:
    env = sqlite_env
    env.usercom.seed_users(EXISTING)
    env.shop.members(*MEMBERS)
    env.usercom.fail_next(1, Fault(401, body='{"detail": "Invalid token."}', route=UserComStandIn.LISTING))

    report = env.run(env.config(audiences=PLAIN, extra=FAST_USERCOM))

    [pair] = report.pairs
    assert (pair.outcome, pair.acknowledged) == ("stopped", 0)
    assert "refused the API key" in (pair.message or "")
    assert env.usercom.calls()["mass_update"] == env.usercom.calls()["update_or_create"] == 0


def test_an_id_learned_from_the_listing_that_went_stale_is_replaced(sqlite_env: Env) -> None:
    env = sqlite_env
    env.usercom.seed_users(EXISTING)
    env.shop.members(*MEMBERS)
    config = env.config(audiences=PLAIN, extra=FAST_USERCOM)
    assert env.run(config).exit_code == 0
    stale = env.usercom.delete_user("m0000")  # deleted in User.com's dashboard since
    assert remote_ids(env)["u:m0000"] == stale
    env.shop.members(*MEMBERS[100:])  # m0000..m0099 leave: one chunk, refused for the stale id

    assert env.run(config).exit_code == 0

    assert env.usercom.calls()["mass_update"] == 15 + 1
    fresh = env.usercom.users()["m0000"]["id"]  # re-created by its own call, with a new id
    assert remote_ids(env)["u:m0000"] == fresh != stale
    assert holding(env.usercom) == {**dict.fromkeys(MEMBERS[:100], False),
                                    **dict.fromkeys(MEMBERS[100:], True)}


BOTH = audience_toml("Buyers", ["nat", "usercom"], query="SELECT id AS user_id, email FROM customers")
PLAN_LIMITS = '\n[schedule]\nmax_send_time = "1m"\n'  # after [destinations.usercom]'s keys


def _plan(env: Env) -> tuple[dict[str, Any], str]:
    path = str(env.tmp_path / "config.toml")
    data = env.cli("plan", "--json", "--config", path)
    human = env.cli("plan", "--config", path)
    assert data.returncode == human.returncode == 0, data.stderr + human.stderr
    return json.loads(data.stdout), human.stdout


def test_plan_counts_the_calls_each_destination_takes_and_their_time(env: Env) -> None:
    env.usercom.seed_users(EXISTING)
    env.shop.members(*MEMBERS)
    env.write_config(audiences=BOTH, extra=PLAN_LIMITS)  # default rates: Nat 20/s, User.com 10/s

    data, human = _plan(env)

    calls = {d["destination"]: d for d in data["destinations"]}
    nat = calls["nat"]
    assert (nat["calls"], nat["by_kind"], nat["send_seconds"]) == (2000, {"user_calls": 2000}, 100.0)
    assert nat["runs"] == 2  # 100 s of calls, a run sends for 1m
    # Never listed: User.com's size is unknown, so the listing counts as holding the members.
    usercom = calls["usercom"]
    assert usercom["by_kind"] == {"id_listing": 20, "mass_updates": 20, "user_calls": 0}
    assert (usercom["calls"], usercom["send_seconds"], usercom["runs"]) == (40, 4.0, 1)
    assert "users of unknown id" in usercom["note"]
    [item] = data["audiences"]
    pair = next(p for p in item["destinations"] if p["destination"] == "usercom")
    assert (pair["sends"], pair["calls"], pair["send_seconds"]) == (2000, 40, 4.0)
    assert "  usercom: 40 calls (20 id listing, 20 mass updates), about 4s at 10/s" in human
    assert "  nat: 2000 calls (2000 one per user), about 1m40s at 20/s: longer than a run sends" in human

    assert env.run(env.config(audiences=PLAIN, extra=FAST_USERCOM)).exit_code == 0  # User.com's pair
    env.shop.members(*MEMBERS[500:], *(f"new{i}" for i in range(5)))  # 500 leave, 5 new enter
    env.write_config(audiences=BOTH, extra=PLAN_LIMITS)

    data, human = _plan(env)

    usercom = next(d for d in data["destinations"] if d["destination"] == "usercom")
    # 500 known users in 5 mass updates, 5 new users one by one: not worth listing 15 pages.
    assert (usercom["calls"], usercom["by_kind"]) == (10, {"mass_updates": 5, "user_calls": 5})
    assert "505 sends in 10 calls, about 1s at 10/s" in human

    env.usercom.down = True
    env.run(env.config(audiences=PLAIN, extra=FAST_USERCOM))
    env.usercom.down = False
    env.write_config(audiences=PLAIN)
    [row] = json.loads(env.cli("status", "--json", "--config", str(env.tmp_path / "config.toml")).stdout)
    assert (row["pending"], row["eta_seconds"]) == (505, 1)  # 10 calls at 10/s


def test_a_first_sync_shows_the_listing_and_the_destination_calls_as_progress(
        sqlite_env: Env, caplog: pytest.LogCaptureFixture) -> None:
    env = sqlite_env
    env.usercom.seed_users(EXISTING)
    env.shop.members(*MEMBERS)
    config = env.config(audiences=PLAIN, extra=FAST_USERCOM)
    caplog.set_level(logging.INFO, logger="syncd.progress")
    engine = open_state(config)
    try:
        run_once(config, Options(policy=FAST, progress=LogLines(every=0)), engine=engine)
    finally:
        engine.dispose()
    lines = [r.getMessage() for r in caplog.records]
    assert "usercom: id listing 15/15 pages (100%)" in lines
    # The calls after the listing, as estimated from the ids it learned: 15 mass updates + 500.
    assert "usercom: 515/515 calls (100%)" in lines
    assert "usercom: buyers 2000/2000 delivered (100%)" in lines
    assert not [line for line in lines if "buyers" in line and "ETA" in line]  # the calls' ETA only


def test_sigterm_during_the_listing_stops_it_promptly_and_keeps_what_it_learned(sqlite_env: Env) -> None:
    env = sqlite_env
    env.usercom.seed_users(EXISTING)
    env.shop.members(*MEMBERS)
    env.write_config(audiences=PLAIN, extra="rate_limit = 2\n")  # a page every 500 ms
    process = env.spawn()
    wait_for(lambda: env.usercom.calls()["listing"] >= 3, what="three listing pages")
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=10)  # within seconds, not after the 15 pages

    assert process.returncode == 1, stderr
    assert env.usercom.calls()["listing"] < 15
    assert env.usercom.calls()["mass_update"] == env.usercom.calls()["update_or_create"] == 0
    users, listed, cursor = listing_row(env) or (None, None, None)
    assert users == 1500 and cursor is not None
    assert len([i for i in remote_ids(env).values() if i is not None]) == listed
    assert "the ids learned are kept" in stderr


def test_a_run_past_its_send_time_limit_lists_no_page(sqlite_env: Env) -> None:
    """The listing starts no page after max_send_time; every pair still sends its first page."""
    env = sqlite_env
    env.usercom.seed_users(EXISTING)
    env.shop.members(*MEMBERS)
    config = env.config(audiences=PLAIN, extra=FAST_USERCOM)
    spent = replace(config, schedule=replace(config.schedule, max_send_time=timedelta(microseconds=1)))

    report = env.run(spent)

    assert env.usercom.calls()["listing"] == 0
    [pair] = report.pairs
    assert (report.out_of_time, pair.acknowledged, pair.pending) == (True, 500, 1500)
