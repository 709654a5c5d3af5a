"""User.com mass updates (issue 12): users whose User.com id syncd learned (from the answers
of users/update_or_create/) get an audience's entries and exits in chunks of `bulk_size`
(`PUT users/mass_update_custom_attributes/`); users not yet known go one by one. A chunk
User.com refuses falls back to one call per user; a chunk that keeps failing acknowledges
nothing. Checked on User.com's own view (the stand-in's users) and the calls per route."""

from __future__ import annotations

import os
import signal
import subprocess

from alembic import command
from sqlalchemy import select, text
from test_alerts import Hook, alerts_toml

from syncd.dev.standins import Fault
from syncd.state.engine import alembic_config, create_state_engine
from syncd.state.tables import REMOTE_ID, L

from conftest import Env, audience_toml

MASS = "PUT /api/public/users/mass_update_custom_attributes/"
ONE = "POST /api/public/users/update_or_create/"
# No extra columns: the members have nothing to send but their membership.
PLAIN = audience_toml("Buyers", ["usercom"], query="SELECT id AS user_id, email FROM customers")
WITH_PLAN = audience_toml("Buyers", ["usercom"], query="SELECT id AS user_id, email, plan FROM customers")
USERS = [f"u{i}" for i in range(1, 8)]


def _calls(env: Env) -> dict[str, int]:
    """Requests per route since the last call (faults included)."""
    routes = dict(env.usercom.routes)
    env.usercom.routes.clear()
    return {route: n for route, n in routes.items() if route in (MASS, ONE)}


def _held(env: Env) -> dict[str, bool]:
    """What User.com holds: custom_id -> the audience attribute."""
    return {user: data["attributes"]["buyers"] for user, data in env.usercom.users().items()
            if "buyers" in data["attributes"]}


def _expect(env: Env, members: set[str], universe: list[str] = USERS) -> None:
    held = _held(env)
    assert {u for u in universe if held.get(u) is True} == members
    assert all(held[u] is False for u in universe if u in held and u not in members)


def _remote_ids(env: Env) -> dict[str, int]:
    engine = create_state_engine(env.state_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(REMOTE_ID.c.subject, REMOTE_ID.c.remote_id)
                                .where(REMOTE_ID.c.destination == "usercom"))
            return {subject.removeprefix("u:"): int(remote_id) for subject, remote_id in rows}
    finally:
        engine.dispose()


def _ledger(env: Env) -> dict[str, tuple[bool | None, bool | None, bool, bool]]:
    """custom_id -> (acked, pending, maybe_true, maybe_false) at User.com."""
    engine = create_state_engine(env.state_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(L.c.subject, L.c.acked, L.c.pending, L.c.maybe_true, L.c.maybe_false)
                                .where(L.c.destination == "usercom"))
            return {r[0].removeprefix("u:"): (r[1], r[2], r[3], r[4]) for r in rows}
    finally:
        engine.dispose()


def _initial(env: Env, extra: str = "bulk_size = 2\n", audiences: str = PLAIN) -> None:
    """u1..u6 sent one by one: User.com's answers teach syncd their ids."""
    env.shop.members(*USERS[:6])
    assert env.run(env.config(audiences=audiences, extra=extra)).exit_code == 0
    assert _calls(env) == {ONE: 6}


def test_known_users_go_in_chunks_of_bulk_size_and_new_users_one_by_one(env: Env) -> None:
    config = env.config(audiences=PLAIN, extra="bulk_size = 2\n")
    env.shop.members(*USERS[:6])
    assert env.run(config).exit_code == 0
    assert _calls(env) == {ONE: 6}
    assert _remote_ids(env) == {u: data["id"] for u, data in env.usercom.users().items()}

    env.shop.members("u1", "u2", "u7")  # 4 known users leave, a new one enters
    assert env.run(config).exit_code == 0
    assert _calls(env) == {MASS: 2, ONE: 1}
    _expect(env, {"u1", "u2", "u7"})
    assert set(_remote_ids(env)) == set(USERS)  # u7's id learned from its answer

    env.shop.members("u1", "u2", "u3", "u4", "u5", "u7")  # 3 known users come back
    assert env.run(config).exit_code == 0
    assert _calls(env) == {MASS: 2}
    _expect(env, {"u1", "u2", "u3", "u4", "u5", "u7"})
    masses = [c for c in env.usercom.accepted() if "ids" in c]
    assert sorted(len(c["ids"]) for c in masses) == [1, 2, 2, 2]
    assert {(c["attribute"], c["value"]) for c in masses} == {("buyers", False), ("buyers", True)}
    assert env.run(config).exit_code == 0
    assert _calls(env) == {}  # settled
    assert all(row == (row[0], None, False, False) for row in _ledger(env).values())


def test_a_refused_chunk_falls_back_to_one_call_per_user_and_relearns_ids(env: Env) -> None:
    _initial(env)
    config = env.config(audiences=PLAIN, extra="bulk_size = 2\n")
    old_id = env.usercom.delete_user("u3")  # deleted in User.com's dashboard
    env.shop.members("u1", "u2")  # u3..u6 leave: chunks [u3, u4] (refused: u3 is gone), [u5, u6]

    report = env.run(config)

    assert report.exit_code == 0
    assert _calls(env) == {MASS: 2, ONE: 2}
    _expect(env, {"u1", "u2"})
    users = env.usercom.users()
    assert users["u3"]["attributes"]["buyers"] is False  # re-created by update_or_create
    assert _remote_ids(env)["u3"] == users["u3"]["id"] != old_id
    assert _ledger(env)["u3"] == (False, None, False, False)
    env.shop.members("u1", "u2", "u3", "u4")  # the re-learned id goes in a chunk again
    assert env.run(config).exit_code == 0
    assert _calls(env) == {MASS: 1}
    _expect(env, {"u1", "u2", "u3", "u4"})


def test_a_5xx_on_a_chunk_is_retried_and_acknowledged(env: Env) -> None:
    _initial(env)
    config = env.config(audiences=PLAIN, extra="bulk_size = 10\n")
    env.usercom.fail_next(1, Fault(503, body="<html>busy</html>"))
    env.shop.members("u1")

    assert env.run(config).exit_code == 0

    assert _calls(env) == {MASS: 2}
    _expect(env, {"u1"})
    assert all(row == (row[0], None, False, False) for row in _ledger(env).values())


def test_a_chunk_failing_until_the_run_gives_up_acknowledges_nothing(env: Env) -> None:
    _initial(env)
    config = env.config(audiences=PLAIN, extra="bulk_size = 10\n")
    env.usercom.fail_next(1_000, Fault(503, body="<html>down</html>"))
    env.shop.members("u1", "u2")

    report = env.run(config)

    assert report.exit_code != 0
    [pair] = report.pairs
    assert (pair.left, pair.acknowledged, pair.pending) == (4, 0, 4)
    assert _calls(env) == {MASS: 3}  # FAST: 3 attempts, each refused with a 503
    # Nothing acknowledged: still `true` in the ledger, `false` pending for the next run.
    assert {u: row[:2] for u, row in _ledger(env).items() if u not in ("u1", "u2")} == {
        u: (True, False) for u in ("u3", "u4", "u5", "u6")}
    env.usercom.heal()
    assert env.run(config).exit_code == 0
    assert _calls(env) == {MASS: 1}
    _expect(env, {"u1", "u2"})


def test_a_refused_key_on_a_chunk_stops_user_com_for_the_run(env: Env) -> None:
    _initial(env)
    env.shop.members("u1")
    revoked = env.config(audiences=PLAIN, extra="bulk_size = 2\n", keys={"USERCOM_API_KEY": "revoked"})

    report = env.run(revoked)

    [pair] = report.pairs
    assert (pair.outcome, pair.acknowledged, pair.pending) == ("stopped", 0, 5)
    assert "refused the API key" in (pair.message or "")
    calls = _calls(env)
    assert set(calls) == {MASS} and 1 <= calls[MASS] <= 3  # no fallback, no retry
    assert all(row[0] is True for user, row in _ledger(env).items() if user != "u1")
    assert env.run(env.config(audiences=PLAIN, extra="bulk_size = 2\n")).exit_code == 0
    _expect(env, {"u1"})


def test_a_chunk_that_timed_out_may_have_been_applied(env: Env) -> None:
    """An uncertain chunk is like one uncertain call: each of its changes may hold."""
    _initial(env)
    config = env.config(audiences=PLAIN, extra="bulk_size = 10\n")
    env.usercom.delay = 2.5  # applied, answered after the 2 s timeout
    env.shop.members("u1", "u2")

    report = env.run(config)

    assert report.exit_code != 0 and report.pairs[0].acknowledged == 0
    assert {u: row for u, row in _ledger(env).items() if u not in ("u1", "u2")} == {
        u: (True, False, False, True) for u in ("u3", "u4", "u5", "u6")}
    env.usercom.heal()
    assert env.run(config).exit_code == 0
    _expect(env, {"u1", "u2"})
    assert all(row == (row[0], None, False, False) for row in _ledger(env).values())


def test_enters_with_extra_traits_go_one_by_one_so_the_traits_arrive(env: Env) -> None:
    _initial(env, audiences=WITH_PLAN)
    config = env.config(audiences=WITH_PLAN, extra="bulk_size = 2\n")
    env.shop.members("u1", "u2")
    assert env.run(config).exit_code == 0
    assert _calls(env) == {MASS: 2}  # leaves carry no traits: chunks
    env.shop.set(("u1", "u1@example.com"), ("u2", "u2@example.com"),
                 ("u3", "u3@example.com", "2026-11-20 10:00:00", None, None, "gold"))

    assert env.run(config).exit_code == 0

    assert _calls(env) == {ONE: 1}
    assert env.usercom.users()["u3"]["attributes"] == {"buyers": True, "plan": "gold"}


def test_a_run_killed_mid_chunk_converges_on_the_next_run(env: Env) -> None:
    """The kill lands after User.com applied a chunk and before syncd recorded it."""
    _initial(env)
    env.shop.members("u1")  # 5 leaves: chunks of 2, 2, 1
    process: list[subprocess.Popen[str]] = []
    target = len(env.usercom.accepted()) + 1
    env.usercom.after_accept = lambda n: os.kill(process[0].pid, signal.SIGKILL) if n == target else None
    process.append(env.spawn())
    process[0].communicate(timeout=60)
    assert process[0].returncode == -signal.SIGKILL
    env.usercom.heal()
    assert any("ids" in call for call in env.usercom.accepted())
    config = env.config(audiences=PLAIN, extra="bulk_size = 2\n")

    assert env.run(config).exit_code == 0

    _expect(env, {"u1"})
    env.shop.members("u1", "u2", "u3")
    assert env.run(config).exit_code == 0
    _expect(env, {"u1", "u2", "u3"})
    assert all(row == (row[0], None, False, False) for row in _ledger(env).values())


# --- upgrading a state database from migration 0004 -----------------------------------------

def test_a_state_from_0004_upgrades_and_learns_ids_as_it_syncs(env: Env) -> None:
    """At 0004: u1 and u2 acknowledged `true` at User.com; u3's `true` pending. The upgraded
    state knows no ids: the first calls are one per user, and their answers teach the ids."""
    engine = create_state_engine(env.state_url)
    try:
        command.upgrade(alembic_config(engine), "0004")
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO ledger (audience_key, destination, ident, subject, user_id, email, nonce, "
                "acked, seq, pending, maybe_true, maybe_false, attempts, failed) VALUES ('buyers', "
                "'usercom', '', :subject, :user, :email, 'n0nce', :acked, :seq, :pending, false, false, "
                "0, false)"), [
                {"subject": f"u:{u}", "user": u, "email": f"{u}@example.com", "acked": acked, "seq": seq,
                 "pending": pending} for u, acked, seq, pending in
                (("u1", True, 1, None), ("u2", True, 1, None), ("u3", None, 0, True))])
    finally:
        engine.dispose()
    config = env.config(audiences=PLAIN, extra="bulk_size = 2\n")
    env.shop.members("u1", "u2", "u3")

    assert env.run(config).exit_code == 0  # migrates to 0005 first

    assert _calls(env) == {ONE: 1}
    assert set(_remote_ids(env)) == {"u3"}
    env.shop.members("u2")  # u1 is not known yet: one call; u3 is: a chunk
    assert env.run(config).exit_code == 0
    assert _calls(env) == {ONE: 1, MASS: 1}
    assert _held(env) == {"u1": False, "u3": False}
    assert set(_remote_ids(env)) == {"u1", "u3"}


# --- the attribute is kept boolean (issue 17) --------------------------------------------

ATTRIBUTES = ("GET /api/public/attributes/", "POST /api/public/attributes/")


def _attribute_calls(env: Env) -> dict[str, int]:
    return {route: n for route, n in env.usercom.routes.items() if route in ATTRIBUTES}


def test_an_attribute_deleted_in_the_dashboard_is_made_again_and_bulk_goes_on(env: Env) -> None:
    _initial(env)
    env.usercom.routes.clear()
    env.usercom.delete_attribute("buyers")  # and every user's value of it
    env.shop.members("u1", "u2")  # u3..u6 leave: chunks [u3, u4], [u5, u6]

    report = env.run(env.config(audiences=PLAIN, extra="bulk_size = 2\n"))

    assert report.exit_code == 0
    # Both chunks refused (no such attribute), one check re-creates it, both sent again.
    assert _attribute_calls(env) == {ATTRIBUTES[0]: 1, ATTRIBUTES[1]: 1}
    assert _calls(env) == {MASS: 4}  # never one call per user
    assert {a["name"]: a["value_type"] for a in env.usercom.attributes()} == {"buyers": "boolean"}
    assert _held(env) == dict.fromkeys(("u3", "u4", "u5", "u6"), False)


def test_an_attribute_deleted_before_calls_of_users_own_is_made_again_first(env: Env) -> None:
    """User.com makes an attribute it does not have from a user's own call, as text: a run
    with such calls checks the attribute before any of them goes out."""
    _initial(env, audiences=WITH_PLAN)
    env.usercom.delete_attribute("buyers")
    env.shop.members("u1", "u2", "u3", "u4", "u5", "u6", "u7")  # u7's entry carries `plan`

    assert env.run(env.config(audiences=WITH_PLAN, extra="bulk_size = 2\n")).exit_code == 0

    assert {a["name"]: a["value_type"] for a in env.usercom.attributes()}["buyers"] == "boolean"
    assert env.usercom.users()["u7"]["attributes"]["buyers"] is True


def test_an_attribute_changed_to_text_fails_the_pair_every_run_with_an_alert(env: Env) -> None:
    hook = Hook()
    try:
        _initial(env)
        config = env.config(audiences=PLAIN, extra="bulk_size = 2\n" + alerts_toml(after_failed_runs=9),
                            keys={"SYNCD_ALERT_WEBHOOK": hook.url})
        env.usercom.set_attribute_type("buyers", "string")  # in User.com's dashboard
        env.shop.members("u1", "u2")
        message = "User.com attribute 'buyers' exists with type 'string', not boolean: change or delete it"

        for run in range(2):  # every run, not only the one that found it
            report = env.run(config)
            [pair] = report.pairs
            assert (report.exit_code, pair.outcome, pair.acknowledged) == (1, "undelivered", 0)
            assert pair.message == message
            calls = _calls(env)
            assert ONE not in calls  # never a silent fallback to one call per user
            assert calls == ({MASS: 2} if run == 0 else {})  # then checked before any mass update
        assert [(b["event"], b["severity"], b["audience"], b["destination"]) for b in hook.bodies] == [
            ("attribute_conflict", "critical", "buyers", "usercom")]
        assert message in hook.bodies[0]["message"]
        failures = env.cli("failures", "--config", str(env.tmp_path / "config.toml"))
        assert "is of type string" in failures.stdout  # the chunks' own refusal, for `syncd failures`

        env.usercom.set_attribute_type("buyers", "boolean")  # fixed in the dashboard
        retried = env.cli("retry", "--json", "--config", str(env.tmp_path / "config.toml"),
                          env={"SYNCD_ALERT_WEBHOOK": hook.url})
        assert retried.returncode == 0, retried.stderr
        assert _calls(env) == {MASS: 2}  # retry goes through the same bulk paths
        assert _held(env) == dict.fromkeys(("u3", "u4", "u5", "u6"), False)
        assert [(b["event"], b["severity"]) for b in hook.bodies][1:] == [("attribute_conflict", "resolved")]
    finally:
        hook.close()


def test_a_state_from_0005_upgrades_keeping_its_ids_and_syncs_on(env: Env) -> None:
    """At 0005: u1..u3 acknowledged `true` at User.com, their ids learned. Upgraded (the
    listing table, ids that may be missing), the ids go on carrying mass updates."""
    env.usercom.seed_users(["u1", "u2", "u3"])
    ids = {u: data["id"] for u, data in env.usercom.users().items()}
    engine = create_state_engine(env.state_url)
    try:
        command.upgrade(alembic_config(engine), "0005")
        with engine.begin() as conn:
            for user in ("u1", "u2", "u3"):
                conn.execute(text(
                    "INSERT INTO ledger (audience_key, destination, ident, subject, user_id, email, nonce, "
                    "acked, seq, maybe_true, maybe_false, attempts, failed) VALUES ('buyers', 'usercom', "
                    "'', :subject, :user, :email, 'n0nce', true, 1, false, false, 0, false)"),
                    {"subject": f"u:{user}", "user": user, "email": f"{user}@example.com"})
                conn.execute(text("INSERT INTO remote_id (destination, subject, remote_id, learned_at) "
                                  "VALUES ('usercom', :subject, :id, '2026-11-30 10:00:00')"),
                             {"subject": f"u:{user}", "id": ids[user]})
            conn.execute(text("INSERT INTO attribute (destination, audience_key, ensured_at) "
                              "VALUES ('usercom', 'buyers', '2026-11-30 10:00:00')"))
    finally:
        engine.dispose()
    env.usercom.add_attribute("buyers")
    env.shop.members("u1")  # u2 and u3 leave

    assert env.run(env.config(audiences=PLAIN, extra="bulk_size = 2\n")).exit_code == 0  # migrates first

    assert _calls(env) == {MASS: 1}
    assert _held(env) == {"u2": False, "u3": False}
    assert _remote_ids(env) == ids
