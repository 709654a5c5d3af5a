"""Several processes, one ledger: real `syncd run-once` processes on SQLite and PostgreSQL."""

from __future__ import annotations

import signal
from datetime import timedelta

from sqlalchemy import update

from syncd.state.engine import create_state_engine, migrate, now
from syncd.state.lease import acquire_lease, renew_lease
from syncd.state.tables import LEASE

from checks import assert_no_stale_values, view
from conftest import Env, wait_for


def test_two_runs_at_once_one_waits_its_turn_and_nothing_is_sent_twice(env: Env) -> None:
    users = [f"u{i:02d}" for i in range(40)]
    env.shop.members(*users)
    env.nat.delay = 0.1
    env.write_config()
    first = env.spawn()
    wait_for(lambda: env.nat.requests > 0, what="the first run to deliver")
    second = env.spawn()

    _, second_err = second.communicate(timeout=60)
    _, first_err = first.communicate(timeout=60)

    assert first.returncode == 0, first_err
    assert second.returncode == 1
    assert f"another run is in progress (pid {first.pid} on " in second_err
    ids = [c["messageId"] for c in env.nat.accepted()]
    assert len(ids) == len(set(ids)) == len(users)


def test_a_killed_holder_is_taken_over_and_its_work_finished(env: Env) -> None:
    users = [f"u{i:02d}" for i in range(40)]
    env.shop.members(*users)
    env.nat.delay = 0.2
    env.write_config()
    holder = env.spawn()
    wait_for(lambda: len(env.nat.accepted()) >= 5, what="the holder to deliver")
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    env.nat.heal()

    taker = env.spawn()  # same host, the holder's pid is gone: no need to wait for expiry
    _, err = taker.communicate(timeout=60)

    assert taker.returncode == 0, err
    assert view(env.nat.accepted(), set(users)) == set(users)
    assert_no_stale_values(env.nat.accepted())


def test_a_lease_held_on_another_host_blocks_until_it_expires(env: Env) -> None:
    env.shop.members("u1")
    path = env.write_config()
    engine = create_state_engine(env.state_url)
    migrate(engine)
    lease = acquire_lease(engine)
    with engine.begin() as conn:  # as if a daemon on another machine held it
        conn.execute(update(LEASE).values(host="other-host", pid=1))
    try:
        blocked = env.cli("run-once", "--config", str(path))
        assert blocked.returncode == 1 and "pid 1 on other-host" in blocked.stderr
        assert env.nat.requests == 0

        with engine.begin() as conn:  # that host went silent: its lease ran out
            conn.execute(update(LEASE).values(expires_at=now() - timedelta(seconds=1)))
        taken = env.cli("run-once", "--config", str(path))
        assert taken.returncode == 0, taken.stderr
        assert env.nat.requests == 1
        assert not renew_lease(engine, lease)  # the old holder would now stop its run
    finally:
        engine.dispose()
