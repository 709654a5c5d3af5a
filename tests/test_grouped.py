"""One call per user across audiences (issue 12, part 1): when several audiences of a user
change in one run, each destination gets one call carrying every changed key; the call's
outcome is every carried change's outcome, its messageId is deterministic for the set."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from syncd.config import Config
from syncd.dev.standins import Fault
from syncd.identify import identify
from syncd.model import Change, Enter, Leave, call_message_id
from syncd.run.report import RunReport, summary_lines
from syncd.state.engine import create_state_engine
from syncd.state.tables import L

from conftest import Env, audience_toml

KEYS = ("all_buyers", "pro_buyers", "vip_buyers")


def _audiences(*destinations: str, guarded: str = "") -> str:
    """Three overlapping audiences: everyone, the `pro` plan, and u1/u2 on it."""
    queries = {
        "all_buyers": "SELECT id AS user_id, email FROM customers",
        "pro_buyers": "SELECT id AS user_id, email FROM customers WHERE plan = 'pro'",
        "vip_buyers": "SELECT id AS user_id, email FROM customers "
                      "WHERE id IN ('u1', 'u2') AND plan = 'pro'",
    }
    dests = list(destinations or ("nat", "usercom"))
    text = ""
    for key, query in queries.items():
        text += audience_toml(key, dests, query=query, key=key)
        if key == guarded:
            text += "max_exit_share = 0\n"  # every exit of this audience waits for approval
    return text


def _short_timeout(config: Config) -> Config:
    nat = replace(config.destinations["nat"], timeout=0.2)
    return replace(config, destinations={"nat": nat})


def _nat_calls(env: Env, user: str) -> list[dict[str, Any]]:
    return [c for c in env.nat.accepted() if c["userId"] == user]


def _usercom_calls(env: Env, user: str) -> list[dict[str, Any]]:
    return [c for c in env.usercom.accepted() if c.get("custom_id") == user]


def _keys(call: dict[str, Any]) -> dict[str, bool]:
    traits = call.get("traits", call)
    return {k: v for k, v in traits.items() if k in KEYS}


def _pair(report: RunReport, key: str, destination: str = "nat") -> Any:
    return next(p for p in report.pairs if p.audience_key == key and p.destination == destination)


def test_a_user_whose_audiences_change_together_gets_one_call_per_destination(env: Env) -> None:
    env.shop.set(("u1", "u1@example.com"), ("u2", "u2@example.com"), ("u3", "u3@example.com"))
    config = env.config(audiences=_audiences())

    first = env.run(config)

    assert first.exit_code == 0
    expected = {"u1": dict.fromkeys(KEYS, True), "u2": dict.fromkeys(KEYS, True),
                "u3": dict.fromkeys(KEYS[:2], True)}
    for user, keys in expected.items():
        assert [_keys(c) for c in _nat_calls(env, user)] == [keys]
        assert [_keys(c) for c in _usercom_calls(env, user)] == [keys]
    # Counts stay per pair; the calls are per destination.
    assert [(p.audience_key, p.destination, p.entered, p.acknowledged) for p in first.pairs] == [
        (k, d, n, n) for d in ("nat", "usercom") for k, n in zip(KEYS, (3, 3, 2), strict=True)]
    assert first.calls == {"nat": 3, "usercom": 3}
    assert "8 changes in 3 calls, 8 acknowledged" in summary_lines(first)[0]

    # u1 leaves two audiences, u3 two: at Nat one call each, with exactly the changed keys.
    # User.com knows their ids by now: one mass update per audience instead (issue 12, part 2).
    env.shop.set(*[("u1", "u1@example.com", "2026-11-20 10:00:00", None, None, "free"),
                   ("u2", "u2@example.com")])
    second = env.run(config)

    assert second.exit_code == 0 and second.calls == {"nat": 2, "usercom": 3}
    assert _keys(_nat_calls(env, "u1")[-1]) == {"pro_buyers": False, "vip_buyers": False}
    assert _keys(_nat_calls(env, "u3")[-1]) == {"all_buyers": False, "pro_buyers": False}
    assert len(_nat_calls(env, "u2")) == 1
    assert env.usercom.routes["PUT /api/public/users/mass_update_custom_attributes/"] == 3
    held = {user: _keys(data["attributes"]) for user, data in env.usercom.users().items()}
    assert held == {"u1": {"all_buyers": True, "pro_buyers": False, "vip_buyers": False},
                    "u2": dict.fromkeys(KEYS, True),
                    "u3": {"all_buyers": False, "pro_buyers": False}}
    assert (_pair(second, "pro_buyers").left, _pair(second, "vip_buyers").left) == (2, 1)


def test_a_grouped_call_has_a_deterministic_id_of_its_own(env: Env) -> None:
    env.shop.members("u1")
    config = _short_timeout(env.config(audiences=_audiences("nat")))
    env.nat.delay = 0.3  # applied, answered after the timeout: uncertain

    first = env.run(config)

    assert first.exit_code == 1
    for key in KEYS:
        pair = _pair(first, key)
        assert (pair.sent, pair.acknowledged, pair.pending) == (1, 0, 1)
    env.nat.heal()
    assert env.run(config).exit_code == 0
    ids = {c["messageId"] for c in _nat_calls(env, "u1")}
    assert len(ids) == 1, "the same set of changes is sent again with the same id"
    # The id is the one derived from the set's change ids, and none of theirs.
    singles = [Change(subject="u:u1", user_id="u1", anonymous_id=None, email="u1@example.com", seq=0,
                      value=True, ident="u1@example.com", nonce=nonce).message_id(key, "nat")
               for key, nonce in _nonces(env, "u:u1")]
    assert len(singles) == 3 and ids == {call_message_id(singles)}
    assert not ids & set(singles)


def _nonces(env: Env, subject: str) -> list[tuple[str, str]]:
    engine = create_state_engine(env.state_url)
    try:
        with engine.connect() as conn:
            return [(r[0], r[1]) for r in conn.execute(select(L.c.audience_key, L.c.nonce).where(
                L.c.subject == subject, L.c.destination == "nat"))]
    finally:
        engine.dispose()


def test_a_rejected_grouped_call_fails_every_change_it_carried(env: Env) -> None:
    env.shop.members("u1")
    config = env.config(audiences=_audiences("nat"))
    env.nat.fail_next(1, Fault(400, body='{"error": "bad contact"}'))

    first = env.run(config)

    assert first.exit_code == 1 and first.calls == {"nat": 1}
    for key in KEYS:
        pair = _pair(first, key)
        assert (pair.failed, pair.acknowledged, pair.pending) == (1, 0, 1), key
    assert env.nat.accepted() == []
    second = env.run(config)
    assert second.exit_code == 0
    assert [_keys(c) for c in _nat_calls(env, "u1")] == [dict.fromkeys(KEYS, True)]


def test_after_an_uncertain_grouped_call_a_leave_still_goes_out(env: Env) -> None:
    env.shop.members("u1")
    config = _short_timeout(env.config(audiences=_audiences("nat")))
    env.nat.delay = 0.3
    assert env.run(config).exit_code == 1  # maybe applied: the destination may hold true
    env.nat.heal()
    env.shop.set()

    report = env.run(config)

    assert report.exit_code == 0
    assert _keys(_nat_calls(env, "u1")[-1]) == dict.fromkeys(KEYS, False)
    assert report.calls == {"nat": 1}


def test_exits_a_guard_holds_never_ride_along(env: Env) -> None:
    ids = [f"u{i}" for i in range(1, 4)]
    env.shop.members(*ids)
    guards = "\n[guards]\nmin_acknowledged = 1\n"
    config = env.config(audiences=_audiences("nat", guarded="all_buyers"), extra=guards)
    assert env.run(config).exit_code == 0
    env.shop.set(("u2", "u2@example.com"), ("u3", "u3@example.com"))  # u1 leaves all three

    report = env.run(config)

    assert _pair(report, "all_buyers").outcome == "held"
    assert _keys(_nat_calls(env, "u1")[-1]) == {"pro_buyers": False, "vip_buyers": False}
    assert (_pair(report, "pro_buyers").acknowledged, _pair(report, "vip_buyers").acknowledged) == (1, 1)


def test_a_grouped_identify_carries_every_key_and_the_current_email() -> None:
    at = datetime(2026, 11, 22, 9, tzinfo=UTC)
    leave = Leave(subject="u:u1", user_id="u1", anonymous_id=None, email="old@example.com", seq=3)
    enter = Enter(subject="u:u1", user_id="u1", anonymous_id=None, email="new@example.com", seq=0,
                  traits={"plan": "pro"}, url="https://shop.example/u1")
    message = identify(leave, "b_key", "usercom", "User.com", at, riders=[("a_key", enter)])
    # A leave's email is the one last sent; the entering audience's is the member's now.
    assert message["traits"] == {"email": "new@example.com", "plan": "pro", "a_key": True, "b_key": False}
    assert message["context"]["personas"]["computation_key"] == "b_key"
    assert message["context"]["page"] == {"url": "https://shop.example/u1"}
    assert message["messageId"] == call_message_id([leave.message_id("b_key", "usercom"),
                                                    enter.message_id("a_key", "usercom")])
    alone = identify(leave, "b_key", "usercom", "User.com", at)
    assert alone["messageId"] == leave.message_id("b_key", "usercom")
    assert alone["traits"] == {"email": "old@example.com", "b_key": False}
