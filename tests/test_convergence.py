"""Property: whatever sequence of snapshots and destination behaviour (success, 5xx, 429,
timeout, a crash mid-delivery), after a final healthy run each destination holds exactly
the source's membership, and Nat never saw a stale value after a newer one."""

from __future__ import annotations

import os
import signal
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncd.config import Config
from syncd.standins import Fault, NatStandIn, StandIn, UserComStandIn

from checks import assert_no_stale_values, view
from conftest import NAT_KEY, USERCOM_KEY, Env, Shop

USERS = ("u1", "u2", "u3", "u4", "u5")
BEHAVIOURS = ("ok", "5xx", "429", "timeout", "crash")
members = st.frozensets(st.sampled_from(USERS))
step = st.tuples(members, st.sampled_from(BEHAVIOURS), st.sampled_from(BEHAVIOURS), st.integers(1, 4))


def _misbehave(server: StandIn, behaviour: str) -> None:
    if behaviour == "5xx":
        server.fail_next(1_000, Fault(503, body="<html>down</html>"))
    elif behaviour == "429":
        server.fail_next(1_000, Fault(429))
    elif behaviour == "timeout":
        server.delay = 0.3  # applied, answered after the 0.2 s timeout


def _crash_after(env: Env, server: StandIn, calls: int) -> None:
    """`syncd run-once` as a real process, killed when `server` has accepted `calls` more calls."""
    target = len(server.accepted()) + calls
    holder: list[int] = []
    server.after_accept = lambda n: os.kill(holder[0], signal.SIGKILL) if holder and n == target else None
    process = env.spawn()
    holder.append(process.pid)
    process.communicate(timeout=60)


def _with_short_timeouts(config: Config) -> Config:
    fast = {name: replace(dest, timeout=0.2) for name, dest in config.destinations.items()}
    return replace(config, destinations=fast)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(steps=st.lists(step, min_size=1, max_size=4), final=members)
def test_destinations_converge_to_the_source(tmp_path_factory: pytest.TempPathFactory,
                                             steps: list[tuple[frozenset[str], str, str, int]],
                                             final: frozenset[str]) -> None:
    tmp: Path = tmp_path_factory.mktemp("convergence")
    with NatStandIn(NAT_KEY) as nat, UserComStandIn(USERCOM_KEY) as usercom:
        env = Env(tmp, f"sqlite:///{tmp / 'state.db'}", Shop(tmp / "shop.db"), nat, usercom)
        config = _with_short_timeouts(env.config())
        for snapshot, nat_does, usercom_does, crash_after in steps:
            env.shop.members(*sorted(snapshot))
            _misbehave(nat, nat_does)
            _misbehave(usercom, usercom_does)
            if "crash" in (nat_does, usercom_does):
                _crash_after(env, nat if nat_does == "crash" else usercom, crash_after)
            else:
                env.run(config)
            nat.heal()
            usercom.heal()
        env.shop.members(*sorted(final))

        assert env.run(config).exit_code == 0
        assert view(nat.accepted(), set(USERS)) == set(final)
        assert view(usercom.accepted(), set(USERS)) == set(final)
        assert_no_stale_values(nat.accepted())
