"""The pipeline end to end: real state database (SQLite and PostgreSQL), real source,
real HTTP stand-ins of Nat and User.com."""

from __future__ import annotations

import time

from freezegun import freeze_time

from syncd.dev.standins import Fault

from checks import flags
from conftest import Env, audience_toml


def test_initial_full_send_reaches_both_destinations(env: Env) -> None:
    env.shop.set(("u1", "u1@example.com"), ("u2", "u2@example.com"), ("u3", None))
    report = env.run()

    assert report.exit_code == 0
    assert flags(env.nat.accepted()) == {"u1": True, "u2": True}  # u3 has no email
    assert {c: u["attributes"]["buyers"] for c, u in env.usercom.users().items()} == {
        "u1": True, "u2": True, "u3": True,
    }
    nat = next(p for p in report.pairs if p.destination == "nat")
    assert (nat.entered, nat.acknowledged, nat.skipped, nat.pending) == (2, 2, 1, 0)
    # The User.com attribute was created as a boolean before the first change.
    # (The extra `plan` column is sent too; User.com makes undeclared traits strings.)
    types = {a["name_std"]: a["value_type"] for a in env.usercom.attributes()}
    assert types == {"buyers": "boolean", "plan": "string"}


def test_rerun_with_no_changes_sends_nothing(env: Env) -> None:
    env.shop.members("u1", "u2")
    env.run()
    nat_before, usercom_before = env.nat.requests, env.usercom.requests

    report = env.run()

    assert report.exit_code == 0
    assert (env.nat.requests, env.usercom.requests) == (nat_before, usercom_before)
    assert all(p.entered == p.left == p.sent == 0 for p in report.pairs)


def test_increment_sends_only_enters_and_leaves(env: Env) -> None:
    env.shop.members("u1", "u2", "u3")
    env.run()
    env.nat.reset()
    env.usercom.reset()

    env.shop.members("u2", "u3", "u4")  # u1 leaves, u4 enters
    report = env.run()

    assert report.exit_code == 0
    assert flags(env.nat.accepted()) == {"u4": True, "u1": False}
    assert flags(env.usercom.accepted()) == {"u4": True, "u1": False}
    leave = next(c for c in env.nat.accepted() if c["userId"] == "u1")
    assert leave["traits"] == {"email": "u1@example.com", "buyers": False}
    assert env.nat.contacts()["u1@example.com"]["buyers"] is False


def test_non_members_never_sent_true_are_never_sent_anything(env: Env) -> None:
    env.shop.members("u1")
    env.run()
    env.shop.members("u1")  # unchanged; u9 never existed
    env.run()
    assert "u9" not in flags(env.nat.accepted())


def test_destination_down_for_a_run_catches_up_without_loss_or_duplicates(env: Env) -> None:
    env.shop.members("u1", "u2")
    env.run()
    env.nat.down = True
    env.shop.members("u2", "u3", "u4")  # u1 leaves, u3 and u4 enter

    down_run = env.run()

    assert down_run.exit_code == 1
    nat = next(p for p in down_run.pairs if p.destination == "nat")
    assert nat.outcome != "ok" and nat.pending == 3
    # The other destination is not held back by Nat's outage.
    assert flags(env.usercom.accepted())["u3"] is True
    usercom = next(p for p in down_run.pairs if p.destination == "usercom")
    assert usercom.outcome == "ok"

    env.nat.down = False
    catch_up = env.run()

    assert catch_up.exit_code == 0
    calls = env.nat.accepted()
    assert flags(calls) == {"u1": False, "u2": True, "u3": True, "u4": True}
    ids = [c["messageId"] for c in calls]
    assert len(ids) == len(set(ids)) == 5  # 2 initial + 3 catch-up, nothing twice
    assert env.run().pairs[0].sent == 0


def test_user_who_enters_and_leaves_while_destination_is_down_receives_nothing(env: Env) -> None:
    env.shop.members("u1")
    env.run()
    env.nat.down = True
    env.shop.members("u1", "flapper")
    env.run()
    env.shop.members("u1")
    env.nat.down = False

    report = env.run()

    assert report.exit_code == 0
    assert "flapper" not in flags(env.nat.accepted())


def test_retry_keeps_the_same_message_id(env: Env) -> None:
    env.shop.members("u1")
    env.nat.fail_next(1, Fault(500, body="<html>oops</html>"))
    env.run()
    attempts = [c for c in env.nat.accepted() if c["userId"] == "u1"]
    assert len(attempts) == 1
    # Later change for the same user gets a different id.
    env.shop.members()
    env.run()
    ids = [c["messageId"] for c in env.nat.accepted() if c["userId"] == "u1"]
    assert len(set(ids)) == 2


def test_401_stops_nat_for_the_run_with_a_clear_message_and_usercom_goes_on(env: Env) -> None:
    env.shop.members(*(f"u{i}" for i in range(50)))
    config = env.config(keys={"NAT_API_KEY": "revoked-key"})
    report = env.run(config)

    assert report.exit_code == 1
    nat = next(p for p in report.pairs if p.destination == "nat")
    assert nat.outcome == "stopped" and "refused the API key" in (nat.message or "")
    assert "401" in (nat.message or "")
    # Stopped at the first refusal: only what was already in flight (concurrency 8) went out.
    assert env.nat.requests <= 8
    assert len(env.usercom.users()) == 50


def test_403_from_usercom_stops_it_and_the_changes_wait(env: Env) -> None:
    env.shop.members("u1", "u2")
    env.usercom.fail_next(100, Fault(403, body='{"detail": "Invalid token."}'))
    report = env.run()

    usercom = next(p for p in report.pairs if p.destination == "usercom")
    assert usercom.outcome == "stopped" and "Invalid token" in (usercom.message or "")
    assert len(env.nat.accepted()) == 2
    env.usercom.reset()
    assert env.run().exit_code == 0
    assert len(env.usercom.users()) == 2


def test_429_with_retry_after_is_honoured_and_delivers(env: Env) -> None:
    env.shop.members("u1")
    env.nat.fail_next(1, Fault(429, retry_after="1"))
    started = time.monotonic()
    report = env.run()

    assert report.exit_code == 0
    assert time.monotonic() - started >= 1.0  # the 1 s Retry-After was waited out
    assert flags(env.nat.accepted()) == {"u1": True}
    assert env.nat.requests == 2


def test_other_4xx_fails_the_change_with_the_reason_and_retries_next_run(env: Env) -> None:
    env.shop.members("u1", "u2")
    env.nat.fail_next(1, Fault(400, body='{"error": "email is not valid"}'))
    report = env.run()

    nat = next(p for p in report.pairs if p.destination == "nat")
    assert (nat.failed, nat.acknowledged, nat.pending) == (1, 1, 1)
    assert "email is not valid" in (nat.message or "")
    assert report.exit_code == 1

    again = env.run()
    assert again.exit_code == 0
    assert set(flags(env.nat.accepted())) == {"u1", "u2"}


def test_now_window_moves_users_out_as_time_passes(env: Env) -> None:
    query = ("SELECT id AS user_id, email FROM customers "
             "WHERE last_order_at >= datetime(:now, '-30 days')")
    config = env.config(audiences=audience_toml("Buyers", ["nat"], query=query))
    env.shop.set(("u1", "u1@example.com", "2026-11-01 12:00:00"),
                 ("u2", "u2@example.com", "2026-11-20 12:00:00"))

    with freeze_time("2026-11-22 09:00:00", real_asyncio=True):
        env.run(config)
    assert flags(env.nat.accepted()) == {"u1": True, "u2": True}

    with freeze_time("2026-12-05 09:00:00", real_asyncio=True):  # u1's order is now 34 days old
        env.run(config)
    assert flags(env.nat.accepted()) == {"u1": False, "u2": True}
    leave = env.nat.accepted()[-1]
    assert leave["timestamp"] == "2026-12-05T09:00:00.000Z"


def test_bad_rows_are_skipped_and_counted(env: Env) -> None:
    env.shop.set(("u1", "a@example.com"), ("u1", "dup@example.com"), (None, "x@example.com"),
                 (None, None, "2026-11-20 10:00:00", "anon-7"))
    report = env.run()

    counts = report.audiences["buyers"]
    assert (counts.rows, counts.members, counts.duplicates, counts.no_identifier) == (4, 2, 1, 1)
    assert env.nat.contacts()["a@example.com"]["buyers"] is True  # the first row wins
    assert set(env.usercom.users()) == {"u1", "anon-7"}  # custom_id falls back to anonymous_id


def test_one_audience_query_failing_does_not_stop_the_others(env: Env) -> None:
    audiences = (audience_toml("Buyers", ["nat"])
                 + audience_toml("Broken", ["nat"], query="SELECT id AS user_id FROM no_such_table"))
    env.shop.members("u1")
    report = env.run(env.config(audiences=audiences))

    assert report.exit_code == 1
    assert "no_such_table" in report.audience_errors["broken"]
    assert flags(env.nat.accepted()) == {"u1": True}
