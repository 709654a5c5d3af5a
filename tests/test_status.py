"""`syncd status` and the backlog gauges: a pair's backlog age, also when nothing was ever
tried (real state databases, real stand-ins)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
import pytest
from freezegun import freeze_time

from syncd.cli.commands import status
from syncd.daemon.metrics import Metrics
from syncd.dev.standins import Fault
from syncd.run.pipeline import open_state

from conftest import USERCOM_KEY, Env, audience_toml, samples


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
    engine = open_state(config)
    try:
        with freeze_time("2026-11-22 10:00:30"):
            row = status.status(config, engine)[0]
    finally:
        engine.dispose()
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
    engine = open_state(config)
    try:
        with freeze_time("2026-11-22 11:00:00"):
            row = next(r for r in status.status(config, engine) if r["destination"] == "usercom")
    finally:
        engine.dispose()
    assert row["oldest_pending_at"] == "2026-11-22T10:00:00Z" and row["oldest_pending_age_seconds"] == 3600
