"""Big audiences next to small ones: a destination's audiences share its pace instead of
queueing behind each other, and a run stops sending at [schedule] max_send_time so that
every audience gets a fresh snapshot while a long initial send goes on over several runs."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import timedelta

from syncd.config import Config
from syncd.daemon import scheduler
from syncd.delivery.pairs import PAGE_SIZE
from syncd.run.pipeline import open_state
from syncd.state.operator import recent_runs

from checks import assert_no_stale_values, flags
from conftest import Env, audience_toml, wait_for

BIG = 1_200  # more than two pages of changes
SMALL_QUERY = "SELECT id AS user_id, email FROM customers WHERE id IN ('u0001', 'u0002', 'u0003')"


def users(n: int) -> list[str]:
    return [f"u{i:04d}" for i in range(n)]


def nat_only(config: Config, **changes: object) -> Config:
    """Nat as configured but with `changes` (e.g. unpaced), and no User.com."""
    nat = replace(config.destinations["nat"], **changes)
    return replace(config, destinations={"nat": nat})


def test_a_big_initial_send_does_not_hold_up_another_audience(env: Env) -> None:
    env.shop.members(*users(BIG))
    audiences = audience_toml("Big", ["nat"]) + audience_toml("Small", ["nat"], query=SMALL_QUERY)
    config = nat_only(env.config(audiences=audiences), rate_limit=None)

    report = env.run(config)

    assert report.exit_code == 0
    calls = env.nat.accepted()
    assert len(flags(calls, "big")) == BIG and flags(calls, "small") == dict.fromkeys(
        ["u0001", "u0002", "u0003"], True)
    # Audiences one after another would send the small one's 3 changes after all 1,200 of
    # the big one's; sharing the destination sends them right after the page in flight.
    last_small = max(i for i, call in enumerate(calls) if "small" in call["traits"])
    assert last_small < PAGE_SIZE + 100


def test_a_run_stops_sending_at_its_time_limit_and_the_next_run_goes_on(env: Env) -> None:
    env.shop.members(*users(BIG))
    env.nat.delay = 0.02  # a page of 500 at 8 in flight takes over a second
    config = nat_only(env.config(audiences=audience_toml("Buyers", ["nat"])), rate_limit=None)
    config = replace(config, schedule=replace(config.schedule, max_send_time=timedelta(seconds=1)))

    first = env.run(config)

    pair = first.pairs[0]
    assert (first.exit_code, first.out_of_time, pair.outcome) == (1, True, "undelivered")
    assert 0 < pair.acknowledged < BIG and pair.pending == BIG - pair.acknowledged
    assert pair.message is not None and "time limit" in pair.message
    runs = [first]
    while runs[-1].out_of_time:
        assert len(runs) < 5, "the runs did not converge"
        runs.append(env.run(config))
    assert runs[-1].exit_code == 0 and len(runs) > 1
    calls = env.nat.accepted()
    assert flags(calls) == dict.fromkeys(users(BIG), True)
    assert len(calls) == BIG  # nothing sent twice
    assert_no_stale_values(calls)


def test_every_audience_sends_a_page_in_every_run_even_past_the_limit(env: Env) -> None:
    """Snapshots slower than the limit, or turns behind long initial sends, must not stop an
    audience from moving: each sends its first page in every run."""
    env.shop.members(*users(BIG))
    audiences = audience_toml("Big", ["nat"]) + audience_toml("Small", ["nat"], query=SMALL_QUERY)
    config = nat_only(env.config(audiences=audiences), rate_limit=None)
    config = replace(config, schedule=replace(config.schedule, max_send_time=timedelta(microseconds=1)))

    report = env.run(config)

    big, small = report.pairs
    assert report.out_of_time and report.exit_code == 1
    assert (small.acknowledged, small.pending, small.outcome) == (3, 0, "ok")
    assert (big.acknowledged, big.pending) == (PAGE_SIZE, BIG - PAGE_SIZE)


def test_the_daemon_runs_again_at_once_while_runs_stop_at_their_time_limit(env: Env) -> None:
    env.shop.members(*users(BIG))
    env.nat.delay = 0.02
    config = nat_only(env.config(audiences=audience_toml("Buyers", ["nat"])), rate_limit=None)
    # One scheduled run an hour: everything must arrive through the follow-up runs.
    config = replace(config, schedule=replace(config.schedule, interval=timedelta(hours=1),
                                              max_send_time=timedelta(seconds=1)))
    engine = open_state(config)

    def outcomes() -> list[str]:
        with engine.connect() as conn:
            return [run.outcome for run in reversed(recent_runs(conn, 10))]

    stop = threading.Event()
    daemon = threading.Thread(target=scheduler.serve, args=(config, stop), daemon=True)
    daemon.start()
    try:
        wait_for(lambda: outcomes()[-1:] == ["ok"], timeout=60, what="a run that delivered the rest")
    finally:
        stop.set()
        daemon.join(timeout=30)
        engine.dispose()
    assert not daemon.is_alive()
    assert outcomes()[0] == "undelivered" and len(outcomes()) >= 2
    assert flags(env.nat.accepted()) == dict.fromkeys(users(BIG), True)
    assert len(env.nat.accepted()) == BIG
