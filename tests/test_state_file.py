"""The state database as configured: a driver that is not installed, a SQLite file that cannot
be created or written (one line naming it, exit 2, no traceback), and the file's mode: it
holds emails and traits, so syncd creates it readable by its owner only."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from syncd.run.pipeline import open_state

from conftest import KEYS_ENV, Env


@pytest.fixture
def private_umask() -> Iterator[None]:
    """The usual umask (files 0644): the mode below must come from syncd, not the umask."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def _one_line_exit_2(env: Env, *needles: str) -> str:
    path = env.write_config()
    result = env.cli("status", "--config", str(path))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


def test_a_state_url_whose_driver_is_missing_is_one_line(sqlite_env: Env) -> None:
    env = replace(sqlite_env, state_url="postgresql+pg8000://syncd:hunter2@db.example/syncd")
    line = _one_line_exit_2(env, "postgresql+pg8000://syncd:***@db.example/syncd", "driver is not installed")
    assert "hunter2" not in line
    assert line.endswith("write postgresql+psycopg:// and pip install 'syncd[postgres]'")


def test_a_state_file_in_a_missing_folder_is_one_line(sqlite_env: Env) -> None:
    path = sqlite_env.tmp_path / "no-such-folder" / "state.db"
    env = replace(sqlite_env, state_url=f"sqlite:///{path}")
    _one_line_exit_2(env, f"state database file {path}: cannot create it",
                     f"folder {path.parent} does not exist")


def _read_only_folder(tmp_path: Path) -> Path:
    """A folder this process cannot create files in (root writes anywhere but in /sys)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    for candidate in (folder, Path("/sys")):
        try:
            (candidate / "probe").touch()
        except OSError:
            return candidate
        (candidate / "probe").unlink()
    pytest.skip("no folder here refuses new files")


def test_a_state_file_in_a_read_only_folder_is_one_line(sqlite_env: Env) -> None:
    path = _read_only_folder(sqlite_env.tmp_path) / "state.db"
    env = replace(sqlite_env, state_url=f"sqlite:///{path}")
    _one_line_exit_2(env, f"state database file {path}: cannot create it")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in a read-only folder")
def test_an_existing_state_file_in_a_read_only_folder_is_one_line(sqlite_env: Env) -> None:
    folder = sqlite_env.tmp_path / "state"
    folder.mkdir()
    env = replace(sqlite_env, state_url=f"sqlite:///{folder / 'state.db'}")
    path = env.write_config()
    assert env.cli("migrate", "--config", str(path)).returncode == 0
    folder.chmod(0o500)  # SQLite cannot make the -wal and -shm files beside it
    try:
        _one_line_exit_2(env, f"state database file {folder / 'state.db'}", "is not writable")
    finally:
        folder.chmod(0o700)


def test_the_state_file_and_its_wal_are_readable_by_the_owner_only(
        sqlite_env: Env, private_umask: None) -> None:
    env = sqlite_env
    env.shop.members("u1")
    assert env.cli("run-once", "--config", str(env.write_config())).returncode == 0
    state = env.tmp_path / "state.db"
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    state.unlink()

    engine = open_state(env.config(keys=KEYS_ENV))  # a fresh file, with -wal and -shm open
    try:
        with engine.connect():
            for name in ("state.db", "state.db-wal", "state.db-shm"):
                assert stat.S_IMODE((env.tmp_path / name).stat().st_mode) == 0o600, name
    finally:
        engine.dispose()


def test_a_state_file_readable_by_others_is_tightened_with_one_warning(
        sqlite_env: Env, private_umask: None) -> None:
    env = sqlite_env
    env.shop.members("u1")
    path = env.write_config()
    assert env.cli("run-once", "--config", str(path)).returncode == 0
    state = env.tmp_path / "state.db"
    state.chmod(0o644)  # as an older syncd left it

    first = env.cli("status", "--config", str(path))
    second = env.cli("status", "--config", str(path))

    assert first.returncode == 0 and second.returncode == 0
    warnings = [line for line in first.stderr.splitlines() if "readable by other users" in line]
    assert len(warnings) == 1 and f"state database file {state}" in warnings[0]
    assert "(mode -rw-r--r--)" in warnings[0] and "0600" in warnings[0]
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    assert "readable by other users" not in second.stderr
