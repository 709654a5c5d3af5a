"""Identity at Nat: Nat keys contacts by email. A member whose email changes is sent `true`
under the new email; a user who leaves gets `false` at every email Nat may hold `true` for
(acknowledged, or possibly applied: in flight at a kill); a messageId is never reused for
another email or another change. Checked on Nat's own view: its contacts, per email."""

from __future__ import annotations

import os
import signal
import subprocess

from alembic import command
from sqlalchemy import select, text

from syncd.model import Enter
from syncd.run.report import summary_lines
from syncd.state.engine import alembic_config, create_state_engine
from syncd.state.tables import L

from checks import assert_message_ids_unique, nat_flags
from conftest import Env, audience_toml

NAT_ONLY = audience_toml("Buyers", ["nat"])


def _ids(env: Env, email: str) -> list[str]:
    return [c["messageId"] for c in env.nat.accepted() if c["traits"].get("email") == email]


def test_an_email_change_sends_true_to_the_new_email_and_a_leave_false_to_both(env: Env) -> None:
    config = env.config(audiences=NAT_ONLY)
    env.shop.set(("u1", "a@example.com"), ("u2", "u2@example.com"))
    assert env.run(config).exit_code == 0
    env.shop.set(("u1", "b@example.com"), ("u2", "u2@example.com"))

    assert env.run(config).exit_code == 0

    assert nat_flags(env.nat.contacts()) == {"a@example.com": True, "b@example.com": True,
                                             "u2@example.com": True}
    env.shop.set(("u2", "u2@example.com"))  # u1 leaves
    calls = len(env.nat.accepted())
    assert env.run(config).exit_code == 0
    assert sorted(c["traits"]["email"] for c in env.nat.accepted()[calls:]) == [
        "a@example.com", "b@example.com"]
    assert nat_flags(env.nat.contacts()) == {"a@example.com": False, "b@example.com": False,
                                             "u2@example.com": True}
    assert set(_ids(env, "a@example.com")).isdisjoint(_ids(env, "b@example.com"))
    assert_message_ids_unique(env.nat.accepted())


def test_true_in_flight_under_the_old_email_at_a_kill_gets_false_when_the_user_leaves(env: Env) -> None:
    """The kill lands after Nat applied `true` to a@ and before syncd recorded it: Nat may hold
    `true` at a@. The email changes to b@ (b@ gets `true` under its own messageId); when the
    user leaves, both emails get `false`."""
    env.write_config(audiences=NAT_ONLY)
    env.shop.set(("u1", "a@example.com"))
    process: list[subprocess.Popen[str]] = []
    env.nat.after_accept = lambda n: os.kill(process[0].pid, signal.SIGKILL) if n == 1 else None
    process.append(env.spawn())
    process[0].wait(timeout=60)
    assert process[0].returncode == -signal.SIGKILL
    env.nat.heal()
    config = env.config(audiences=NAT_ONLY)

    env.shop.set(("u1", "b@example.com"))
    assert env.run(config).exit_code == 0
    assert nat_flags(env.nat.contacts()) == {"a@example.com": True, "b@example.com": True}
    env.shop.set(("u2", "u2@example.com"))  # u1 leaves
    assert env.run(config).exit_code == 0

    assert nat_flags(env.nat.contacts())["a@example.com"] is False
    assert nat_flags(env.nat.contacts())["b@example.com"] is False
    assert set(_ids(env, "a@example.com")).isdisjoint(_ids(env, "b@example.com"))
    assert_message_ids_unique(env.nat.accepted())
    calls = len(env.nat.accepted())
    assert env.run(config).exit_code == 0
    assert env.nat.accepted()[calls:] == []  # settled: nothing more to send


def test_an_email_changing_back_sends_nothing_and_user_com_keeps_one_row(env: Env) -> None:
    """Nat still holds `true` at a@ (acknowledged): going back to a@ needs no call. User.com
    keys by custom_id: an email change there is no new identity, one ledger row per user."""
    config = env.config()
    env.shop.set(("u1", "a@example.com"))
    assert env.run(config).exit_code == 0
    env.shop.set(("u1", "b@example.com"))
    assert env.run(config).exit_code == 0
    nat_calls, usercom_calls = len(env.nat.accepted()), len(env.usercom.accepted())
    env.shop.set(("u1", "a@example.com"))

    assert env.run(config).exit_code == 0

    assert env.nat.accepted()[nat_calls:] == []
    assert env.usercom.accepted()[usercom_calls:] == []
    engine = create_state_engine(env.state_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(L.c.destination, L.c.ident).where(L.c.subject == "u:u1")
                                .order_by(L.c.destination, L.c.ident)).all()
    finally:
        engine.dispose()
    assert [tuple(r) for r in rows] == [("nat", "a@example.com"), ("nat", "b@example.com"),
                                        ("usercom", "")]


# --- upgrading a state database from before migration 0004 ---------------------------------

LEGACY_COLUMNS = ("audience_key, destination, subject, user_id, email, acked, seq, pending, in_flight, "
                  "maybe_true, maybe_false, attempts, failed")


def _legacy_state(url: str) -> None:
    """A state database at revision 0002 as the previous release left it: u1 acknowledged
    `true` at both destinations; u2's `true` was in flight at Nat when the process died
    (recovered as "may hold true", still pending) and acknowledged at User.com."""
    engine = create_state_engine(url)
    try:
        command.upgrade(alembic_config(engine), "0002")
        rows = [("nat", "u1", True, 1, None, False), ("nat", "u2", None, 0, True, True),
                ("usercom", "u1", True, 1, None, False), ("usercom", "u2", True, 1, None, False)]
        with engine.begin() as conn:
            conn.execute(text(
                f"INSERT INTO ledger ({LEGACY_COLUMNS}) VALUES ('buyers', :dest, :subject, :user, "
                ":email, :acked, :seq, :pending, NULL, :maybe_true, false, 1, false)"
            ), [{"dest": dest, "subject": f"u:{user}", "user": user, "email": f"{user}@example.com",
                 "acked": acked, "seq": seq, "pending": pending, "maybe_true": maybe}
                for dest, user, acked, seq, pending, maybe in rows])
    finally:
        engine.dispose()


def test_an_upgraded_state_syncs_on_without_resending_what_was_acknowledged(env: Env) -> None:
    _legacy_state(env.state_url)
    config = env.config()
    env.shop.members("u1", "u2")

    assert env.run(config).exit_code == 0

    # Only the pending change goes out, with the messageId it had before the upgrade.
    legacy_id = Enter(subject="u:u2", user_id="u2", anonymous_id=None, email="u2@example.com",
                      seq=0).message_id("buyers", "nat")
    assert [(c["traits"]["email"], c["messageId"]) for c in env.nat.accepted()] == [
        ("u2@example.com", legacy_id)]
    assert [c for c in env.usercom.accepted() if "buyers" in c] == []
    # The adopted rows behave as rows of the new schema: an email change, then a leave.
    env.shop.set(("u1", "new@example.com"), ("u2", "u2@example.com"))
    assert env.run(config).exit_code == 0
    env.shop.members("u2")
    assert env.run(config).exit_code == 0
    assert nat_flags(env.nat.contacts()) == {"u1@example.com": False, "new@example.com": False,
                                             "u2@example.com": True}
    assert [c["buyers"] for c in env.usercom.accepted() if c.get("custom_id") == "u1"] == [False]
    assert_message_ids_unique(env.nat.accepted())


def test_a_user_who_leaves_with_two_emails_is_one_exit(sqlite_env: Env) -> None:
    """At Nat a user is counted once, as `acknowledged` counts them: a user leaving with two
    emails is one `left` (two changes, one per email) and one exit for the guard. Resync says
    why it marks more rows than it resends: the earlier emails keep `true` until the user leaves."""
    env = sqlite_env
    path = env.write_config(audiences=NAT_ONLY)
    config = env.config(audiences=NAT_ONLY)
    users = [f"u{i}" for i in range(10)]
    env.shop.set(*((u, f"{u}@example.com") for u in users))
    assert env.run(config).exit_code == 0
    env.shop.set(*((u, f"{u}@new.example.com" if u in users[:4] else f"{u}@example.com") for u in users))
    assert env.run(config).exit_code == 0  # u0..u3 now have `true` under two emails each

    resync = env.cli("resync", "--audience", "buyers", "--config", str(path))
    assert resync.returncode == 0, resync.stderr
    assert ("resync buyers at nat: 10 acknowledged users marked to be sent again; 4 contacts under "
            "members' earlier emails keep `true` until the user leaves (not resent)") in resync.stderr
    assert "resync buyers at nat: resent 10 (true) / 0 (false), 10 acknowledged" in resync.stderr

    env.shop.set(*((u, f"{u}@example.com") for u in users[4:]))  # u0..u3 leave: 4 of 10 users
    report = env.run(config)

    pair = report.pairs[0]
    assert report.outcome == "ok"  # 4 exits are 40% of 10 (the guard's limit is 50%), not 8 of 10
    assert (pair.left, pair.sent, pair.acknowledged, pair.pending) == (4, 8, 8, 0)
    assert "4 left, 8 changes in 8 calls" in summary_lines(report)[0]
    assert sum(1 for flag in nat_flags(env.nat.contacts()).values() if flag is False) == 8
