"""Schema versions of the state database (SPEC 3, "The schema"), as real processes meet them on
SQLite and PostgreSQL: a state left at 0004 by the previous release, a brand-new database, a
schema newer than this syncd, `[state] auto_migrate = false`, `syncd migrate`'s words, the
readiness probe; and the state URLs syncd refuses before connecting."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import text

from syncd.daemon.probes import readiness
from syncd.state.engine import alembic_config, create_state_engine, migrations_dir
from syncd.state.schema import versions

from checks import flags
from conftest import Env, dump_state, stamp_schema

HEAD = ScriptDirectory(str(migrations_dir())).get_current_head()  # this syncd's newest migration
OLD = "0004"  # the previous release's newest migration
READ_ONLY = (["status"], ["history"], ["failures"], ["plan"], ["approve", "--audience", "buyers"])
SENDING = (["run-once"], ["resync", "--audience", "buyers"], ["retry"])


def _at_0004_with_data(url: str) -> None:
    """A state as the previous release left it: u1 and u2 acknowledged `true` at both destinations."""
    engine = create_state_engine(url)
    try:
        command.upgrade(alembic_config(engine), OLD)
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO ledger (audience_key, destination, ident, subject, user_id, email, nonce, "
                "acked, seq, pending, maybe_true, maybe_false, attempts, failed) VALUES ('buyers', :dest, "
                ":ident, :subject, :user, :email, 'n0nce', true, 1, NULL, false, false, 1, false)"), [
                {"dest": dest, "ident": f"{user}@example.com" if dest == "nat" else "",
                 "subject": f"u:{user}", "user": user, "email": f"{user}@example.com"}
                for dest in ("nat", "usercom") for user in ("u1", "u2")])
    finally:
        engine.dispose()


def _revision(url: str) -> str | None:
    engine = create_state_engine(url)
    try:
        return versions(engine).current
    finally:
        engine.dispose()


def _one_line(result: Any) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return str(lines[0])


def test_read_only_commands_never_upgrade_an_older_schema(env: Env) -> None:
    _at_0004_with_data(env.state_url)
    path = env.write_config()
    before = dump_state(env.state_url)

    for command_line in READ_ONLY:
        result = env.cli(*command_line, "--config", str(path))
        assert result.returncode == 2, (command_line, result.stderr)
        assert _one_line(result).endswith(
            f"state schema {OLD} is older than this syncd ({HEAD}): run `syncd migrate`")

    assert _revision(env.state_url) == OLD
    assert dump_state(env.state_url) == before


def test_run_once_upgrades_an_older_schema_and_resends_nothing(env: Env) -> None:
    _at_0004_with_data(env.state_url)
    env.shop.members("u1", "u2")
    path = env.write_config()

    result = env.cli("run-once", "--config", str(path))

    assert result.returncode == 0, result.stderr
    assert f"state database: migrated {OLD} → {HEAD}" in result.stderr
    assert _revision(env.state_url) == HEAD
    assert env.nat.accepted() == [] and env.usercom.accepted() == []
    env.shop.members("u2", "u3")
    assert env.cli("run-once", "--config", str(path)).returncode == 0
    assert flags(env.nat.accepted()) == {"u1": False, "u3": True}


def test_with_auto_migrate_off_only_migrate_upgrades(env: Env) -> None:
    _at_0004_with_data(env.state_url)
    env.shop.members("u1", "u2", "u3")
    path = env.write_config().read_text().replace("[state]\n", "[state]\nauto_migrate = false\n")
    (env.tmp_path / "config.toml").write_text(path)
    config = str(env.tmp_path / "config.toml")

    for command_line in SENDING:
        result = env.cli(*command_line, "--config", config)
        assert result.returncode == 2, (command_line, result.stderr)
        assert _one_line(result).endswith(f"state schema {OLD} is older than this syncd ({HEAD}): run "
                                          "`syncd migrate` ([state] auto_migrate is false)")
    assert _revision(env.state_url) == OLD
    assert env.nat.accepted() == []

    migrated = env.cli("migrate", "--config", config)
    again = env.cli("migrate", "--config", config)

    assert (migrated.returncode, migrated.stdout) == (0, f"migrated {OLD} → {HEAD}\n")
    assert (again.returncode, again.stdout) == (0, f"already at {HEAD}\n")
    assert env.cli("run-once", "--config", config).returncode == 0
    assert flags(env.nat.accepted()) == {"u3": True}


@pytest.mark.parametrize("command_line", [*READ_ONLY, *SENDING, ["run"], ["migrate"]],
                         ids=lambda c: c[0])
def test_a_newer_schema_stops_every_command_in_one_line(env: Env, command_line: list[str]) -> None:
    env.shop.members("u1")
    path = env.write_config()
    assert env.cli("run-once", "--config", str(path)).returncode == 0
    stamp_schema(env.state_url, "0042")
    before = dump_state(env.state_url)

    result = env.cli(*command_line, "--config", str(path))

    assert result.returncode == 2, result.stderr
    assert f"state schema 0042 is newer than this syncd ({HEAD}): upgrade syncd" in _one_line(result)
    assert dump_state(env.state_url) == before


def test_a_brand_new_database_is_created_unless_auto_migrate_is_off(env: Env) -> None:
    """`syncd status` right after installing shows the audiences, never synced: creating a
    schema nobody uses yet changes nothing anyone relies on. With auto_migrate = false only
    `syncd migrate` creates it."""
    path = env.write_config()
    off = env.tmp_path / "off.toml"
    off.write_text(path.read_text().replace("[state]\n", "[state]\nauto_migrate = false\n"))

    refused = env.cli("status", "--config", str(off))
    assert refused.returncode == 2
    assert _one_line(refused).endswith("the state database has no syncd schema yet and [state] "
                                       "auto_migrate is false: run `syncd migrate`")
    assert _revision(env.state_url) is None

    created = env.cli("status", "--config", str(path))
    assert created.returncode == 0, created.stderr
    assert _revision(env.state_url) == HEAD


def test_migrate_creates_a_new_database_and_says_so(env: Env) -> None:
    result = env.cli("migrate", "--config", str(env.write_config()))
    assert (result.returncode, result.stdout) == (0, f"created the state schema at {HEAD}\n")


def test_readiness_names_a_newer_schema(env: Env) -> None:
    _at_0004_with_data(env.state_url)
    engine = create_state_engine(env.state_url)
    try:
        assert readiness(engine)() == (f"state database not migrated: at revision {OLD}, this syncd "
                                       f"needs {HEAD}: run `syncd migrate`")
        stamp_schema(env.state_url, "0042")
        assert readiness(engine)().startswith(f"state schema 0042 is newer than this syncd ({HEAD})")
    finally:
        engine.dispose()


# --- state URLs refused before any connection ---------------------------------------------------


@pytest.mark.parametrize(("url", "problem"), [
    ("mysql+pymysql://syncd:hunter2@127.0.0.1:1/app",
     "the state is kept in SQLite or PostgreSQL only, not mysql"),
    ("duckdb:///state.duckdb", "the state is kept in SQLite or PostgreSQL only, not duckdb"),
    ("postgres://syncd:hunter2@127.0.0.1:1/state",
     "SQLAlchemy has no 'postgres' dialect: write postgresql+psycopg://…"),
])
def test_a_state_url_of_another_database_is_a_config_error(sqlite_env: Env, url: str, problem: str) -> None:
    env = replace(sqlite_env, state_url=url)
    result = env.cli("status", "--config", str(env.write_config()))
    assert result.returncode == 2
    line = _one_line(result)
    assert f"config.toml: state.url: {problem}" in line and "hunter2" not in line


def test_a_postgres_source_url_gets_the_hint(sqlite_env: Env) -> None:
    path = sqlite_env.write_config(extra='\n[sources.pg]\nurl = "postgres://reader@127.0.0.1:1/app"\n')
    result = sqlite_env.cli("check", "--config", str(path))
    assert result.returncode == 2
    assert _one_line(result).endswith("sources.pg.url: SQLAlchemy has no 'postgres' dialect: write "
                                      "postgresql+psycopg://…")
