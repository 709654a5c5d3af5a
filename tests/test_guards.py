"""The mass-exit guard: held exits, `syncd approve`, and the limit in the config."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import select

from syncd.config import AudienceConfig, GuardConfig
from syncd.guards import judge
from syncd.state.engine import create_state_engine
from syncd.state.tables import APPROVAL

from conftest import Env, audience_toml

IDS = [f"u{i:02d}" for i in range(20)]


def _falses(env: Env) -> set[str]:
    return {c["userId"] for c in env.nat.accepted() if c["traits"].get("buyers") is False}


def _pair(report: Any, destination: str = "nat") -> Any:
    return next(p for p in report.pairs if p.destination == destination)


def _approvals(url: str) -> list[tuple[Any, ...]]:
    engine = create_state_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(
                select(APPROVAL.c.audience_key, APPROVAL.c.destination, APPROVAL.c.exits)
            )]
    finally:
        engine.dispose()


@pytest.mark.parametrize(("members", "exits", "acknowledged", "limit", "held"), [
    (8, 12, 20, 0.5, True),    # 60% > 50%
    (10, 10, 20, 0.5, False),  # exactly the limit is allowed
    (0, 20, 20, 0.5, True),    # the query returned nothing
    (0, 9, 9, 0.5, False),     # fewer than min_acknowledged (10): never held
    (0, 20, 20, 1.0, False),   # max_exit_share = 1 turns the guard off
    (19, 1, 20, 0.0, True),    # 0: every exit waits for approval
])
def test_judge(members: int, exits: int, acknowledged: int, limit: float, held: bool) -> None:
    audience = AudienceConfig("Buyers", "buyers", "shop", ("nat",), "SELECT 1", max_exit_share=limit)
    assert judge(audience, GuardConfig(), "nat", members, exits, acknowledged).held is held


def test_mass_exit_is_held_while_entries_flow_and_approve_releases_it(env: Env) -> None:
    path = str(env.write_config(audiences=audience_toml("Buyers", ["nat"])))
    env.shop.members(*IDS)
    assert env.cli("run-once", "--config", path).returncode == 0
    env.shop.members(*IDS[:8], "new")  # 12 of 20 leave (60% > 50%), one enters

    held = env.cli("run-once", "--config", path)

    assert held.returncode == 1
    assert _falses(env) == set()
    assert "new" in {c["userId"] for c in env.nat.accepted()}
    error = next(line for line in held.stderr.splitlines() if line.startswith("ERROR holding"))
    assert ("holding 12 exits of buyers at nat: 12 exits are 60% of the 20 members nat holds as true "
            "(limit 50%). No `false` was sent.") in error
    assert f"syncd approve --config {path} --audience buyers --destination nat" in error
    status = json.loads(env.cli("status", "--json", "--config", path).stdout)[0]
    assert (status["last_outcome"], status["pending"]) == ("held", 12)
    plan = json.loads(env.cli("plan", "--json", "--config", path).stdout)
    assert plan["audiences"][0]["destinations"][0]["guard"]["held"] is True
    history = json.loads(env.cli("history", "--json", "--config", path).stdout)
    assert (history[0]["outcome"], history[0]["held"]) == ("held", 1)

    approved = env.cli("approve", "--audience", "buyers", "--config", path)

    assert approved.returncode == 0, approved.stderr
    assert "approved: the next run sends 12 exits of buyers at nat" in approved.stdout
    released = env.cli("run-once", "--config", path)
    assert released.returncode == 0, released.stderr
    assert _falses(env) == set(IDS[8:])
    assert "sending 12 exits of buyers at nat, approved by" in released.stderr
    assert _approvals(env.state_url) == []  # used up: the next mass exit is held again


def test_an_empty_query_result_is_held(env: Env) -> None:
    config = env.config(audiences=audience_toml("Buyers", ["nat"]))
    env.shop.members(*IDS)
    env.run(config)
    env.shop.members()

    report = env.run(config)

    assert report.exit_code == 1 and report.outcome == "held"
    nat = _pair(report)
    assert (nat.outcome, nat.left, nat.sent, nat.pending) == ("held", 20, 0, 20)
    assert "the query returned no members, but nat holds 20 as true" in (nat.message or "")
    assert _falses(env) == set()


def test_small_audiences_are_not_guarded(env: Env) -> None:
    config = env.config(audiences=audience_toml("Buyers", ["nat"]))
    env.shop.members(*IDS[:9])
    env.run(config)
    env.shop.members()
    assert env.run(config).exit_code == 0
    assert _falses(env) == set(IDS[:9])


def test_raising_the_limit_in_the_config_releases_the_exits(env: Env) -> None:
    env.shop.members(*IDS)
    env.run(env.config(audiences=audience_toml("Buyers", ["nat"])))
    env.shop.members(*IDS[:8])
    assert _pair(env.run(env.config(audiences=audience_toml("Buyers", ["nat"])))).outcome == "held"

    raised = audience_toml("Buyers", ["nat"]).replace("destinations", "max_exit_share = 0.7\ndestinations")
    report = env.run(env.config(audiences=raised))

    assert report.exit_code == 0
    assert _falses(env) == set(IDS[8:])


def test_an_approval_covers_only_the_exits_seen_when_approving(sqlite_env: Env) -> None:
    env = sqlite_env
    path = str(env.write_config(audiences=audience_toml("Buyers", ["nat"])))
    env.shop.members(*IDS)
    env.cli("run-once", "--config", path)
    env.shop.members(*IDS[:8])
    env.cli("run-once", "--config", path)  # 12 exits held
    approve = env.cli("approve", "--audience", "buyers", "--destination", "nat", "--config", path)
    assert approve.returncode == 0
    env.shop.members(*IDS[:5])  # 15 exits now: more than approved

    again = env.cli("run-once", "--config", path)

    assert again.returncode == 1 and _falses(env) == set()
    assert "an approval covers 12, not 15" in again.stderr
    assert _approvals(env.state_url) == [("buyers", "nat", 12)]


def test_approve_with_nothing_held_records_nothing(sqlite_env: Env) -> None:
    path = str(sqlite_env.write_config(audiences=audience_toml("Buyers", ["nat"])))
    sqlite_env.shop.members(*IDS)
    sqlite_env.cli("run-once", "--config", path)
    result = sqlite_env.cli("approve", "--audience", "buyers", "--json", "--config", path)
    assert result.returncode == 0
    assert json.loads(result.stdout)[0]["approved"] is False
    assert _approvals(sqlite_env.state_url) == []


def test_a_failed_delivery_of_approved_exits_keeps_the_approval(sqlite_env: Env) -> None:
    env = sqlite_env
    config = env.config(audiences=audience_toml("Buyers", ["nat"]))
    env.shop.members(*IDS)
    env.run(config)
    env.shop.members()
    env.run(config)  # held
    path = str(env.tmp_path / "config.toml")
    assert env.cli("approve", "--audience", "buyers", "--config", path).returncode == 0
    env.nat.down = True
    assert _pair(env.run(config)).outcome == "undelivered"  # released, but Nat is down
    assert _approvals(env.state_url) == [("buyers", "nat", 20)]
    env.nat.down = False
    assert env.run(config).exit_code == 0
    assert _falses(env) == set(IDS)
    assert _approvals(env.state_url) == []
