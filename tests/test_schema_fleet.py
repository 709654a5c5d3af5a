"""A fleet sharing one ledger: another machine upgrades syncd and migrates the state while this
older daemon is running. Its next run must not write into a schema it does not know: the run
stops before it starts (one line, exit 2, which the systemd unit does not restart)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from sqlalchemy import inspect, text

from syncd.errors import StateError
from syncd.run.pipeline import Options, open_state, run_once
from syncd.state.engine import create_state_engine

from conftest import KEYS_ENV, Env, stamp_schema, wait_for

NEWER = "0042"  # a revision no syncd of this version knows


def test_a_run_on_an_engine_opened_before_the_ledger_was_migrated_stops_before_it_sends(env: Env) -> None:
    env.shop.members("u1", "u2")
    config = env.config()
    engine = open_state(config)  # the daemon's engine, opened at start
    try:
        assert run_once(config, Options(), engine=engine).exit_code == 0
        env.shop.members("u1", "u2", "u3")
        stamp_schema(env.state_url, NEWER)  # another machine, newer syncd: `syncd migrate`
        sent = (env.nat.requests, env.usercom.requests)
        with pytest.raises(StateError, match=f"state schema {NEWER} is newer than this syncd"):
            run_once(config, Options(), engine=engine)
        assert (env.nat.requests, env.usercom.requests) == sent  # u3 waits for an upgraded syncd
    finally:
        engine.dispose()


@pytest.mark.parametrize("state_url", ["sqlite"], indirect=True)
def test_a_daemon_whose_ledger_is_migrated_past_it_stops_with_exit_2(env: Env) -> None:
    env.shop.members("u1")
    config = env.write_config(extra='\n[schedule]\ninterval = "1m"\njitter = "0s"\n')
    daemon = subprocess.Popen([sys.executable, "-m", "syncd", "run", "--config", str(config)],
                              cwd=env.tmp_path, env={**os.environ, **KEYS_ENV},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: env.usercom.requests > 0 or daemon.poll() is not None, timeout=30,
                 what="the first run")
        stamp_schema(env.state_url, NEWER)
        _, stderr = daemon.communicate(timeout=120)  # the next run starts a minute after the first
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.communicate()
    assert daemon.returncode == 2, stderr
    assert "Traceback" not in stderr
    assert f"state schema {NEWER} is newer than this syncd" in stderr
    assert "syncd stopped" in stderr  # a clean stop, the scheduler shut down first



def test_an_upgrade_that_fails_halfway_leaves_the_schema_as_it_was(env: Env) -> None:
    """The whole upgrade is one transaction (SQLite too): what another process can see is the
    schema before or after it, never one left half-way (a migration failing here: a table that
    0003 creates is there already)."""
    engine = create_state_engine(env.state_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE alert_state (event TEXT)"))
    finally:
        engine.dispose()
    result = env.cli("migrate", "--config", str(env.write_config()))
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    engine = create_state_engine(env.state_url)
    try:
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert tables == {"alert_state"}  # no ledger from 0001, no alembic_version at 0002


def test_commands_meeting_a_new_state_at_once_all_see_a_whole_schema(env: Env) -> None:
    """A daemon starting while someone runs `syncd status` (or several daemons at once): one
    creates the schema, the others wait and see it whole, never a half-built one ("state schema
    0003 is older…", "table … already exists" before SQLite's migrations ran in one transaction)."""
    config = env.write_config()
    processes = [subprocess.Popen([sys.executable, "-m", "syncd", "status", "--config", str(config)],
                                  cwd=env.tmp_path, env={**os.environ, **KEYS_ENV},
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(6)]
    results = [(p.wait(timeout=120), p.communicate()[1]) for p in processes]
    assert [code for code, _ in results] == [0] * 6, [err for _, err in results]
