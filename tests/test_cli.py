"""The commands as users and systemd run them: real processes, real servers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from syncd.state.engine import create_state_engine, migrate
from syncd.state.lease import acquire_lease, release_lease

from conftest import KEYS_ENV, NAT_KEY, USERCOM_KEY, Env, run_cli


def _no_secrets(*texts: str) -> None:
    for text in texts:
        assert NAT_KEY not in text and USERCOM_KEY not in text


def test_run_once_exit_0_when_everything_is_delivered(sqlite_env: Env) -> None:
    sqlite_env.shop.members("u1", "u2")
    path = sqlite_env.write_config()
    result = sqlite_env.cli("run-once", "--config", str(path))

    assert result.returncode == 0, result.stderr
    summary = [line for line in result.stderr.splitlines() if line.startswith("INFO nat:")]
    assert summary == ["INFO nat: 1 audience, 2 entered, 0 left, 2 changes in 2 calls, 2 acknowledged, "
                       "0 skipped (no email), 0 failed, 0 pending: ok"]
    _no_secrets(result.stdout, result.stderr)


def test_run_once_exit_1_when_something_waits_for_the_next_run(sqlite_env: Env) -> None:
    sqlite_env.shop.members("u1")
    sqlite_env.nat.down = True
    path = sqlite_env.write_config()
    result = sqlite_env.cli("run-once", "--config", str(path))

    assert result.returncode == 1
    assert "1 pending" in result.stderr and "HTTP 503" in result.stderr
    assert "Traceback" not in result.stderr
    _no_secrets(result.stdout, result.stderr)


def test_status_human_and_json(sqlite_env: Env) -> None:
    sqlite_env.shop.members("u1", "u2")
    path = sqlite_env.write_config()
    sqlite_env.cli("run-once", "--config", str(path))
    sqlite_env.shop.members("u2", "u3")  # one enter, one leave not yet sent

    human = sqlite_env.cli("status", "--config", str(path))
    assert human.returncode == 0
    assert human.stdout.splitlines()[0].split() == [
        "audience", "destination", "members", "acknowledged", "pending", "oldest_pending", "eta", "skipped",
        "failed", "last_run", "duration", "last_outcome",
    ]
    rows = json.loads(sqlite_env.cli("status", "--json", "--config", str(path)).stdout)
    nat = next(r for r in rows if r["destination"] == "nat")
    # status reads the last snapshot: the shop changed after it, so nothing is pending yet.
    assert (nat["members"], nat["acknowledged"], nat["pending"], nat["last_outcome"]) == (2, 2, 0, "ok")
    _no_secrets(human.stdout, human.stderr)


def test_migrate_creates_the_schema(sqlite_env: Env) -> None:
    path = sqlite_env.write_config()
    result = sqlite_env.cli("migrate", "--config", str(path))
    assert result.returncode == 0
    assert (sqlite_env.tmp_path / "state.db").exists()


def test_second_run_while_one_holds_the_lease_says_which(sqlite_env: Env) -> None:
    sqlite_env.shop.members("u1")
    path = sqlite_env.write_config()
    engine = create_state_engine(sqlite_env.state_url)
    migrate(engine)
    lease = acquire_lease(engine)
    try:
        result = sqlite_env.cli("run-once", "--config", str(path))
    finally:
        release_lease(engine, lease)
        engine.dispose()
    assert result.returncode == 1
    assert "another run is in progress" in result.stderr
    assert "Traceback" not in result.stderr
    assert sqlite_env.nat.requests == 0


def test_daemon_runs_at_start_and_stops_cleanly_on_sigterm(sqlite_env: Env) -> None:
    sqlite_env.shop.members("u1", "u2", "u3")
    path = sqlite_env.write_config()
    process = subprocess.Popen(
        [sys.executable, "-m", "syncd", "run", "--config", str(path)],
        cwd=sqlite_env.tmp_path, env={**_env(), **KEYS_ENV},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while len(sqlite_env.nat.accepted()) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(sqlite_env.nat.accepted()) == 3
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    assert "received SIGTERM" in stderr and "syncd stopped" in stderr
    assert "Traceback" not in stderr
    _no_secrets(stderr)


def _env() -> dict[str, str]:
    return dict(os.environ)


def _without_keys(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    """A command as an operator runs it beside a systemd service: the keys exist only inside it."""
    environ = {name: value for name, value in _env().items() if name not in KEYS_ENV}
    return subprocess.run([sys.executable, "-m", "syncd", *args], cwd=env.tmp_path, env=environ,
                          capture_output=True, text=True, timeout=60, check=False)


def test_read_only_commands_need_no_api_keys(sqlite_env: Env) -> None:
    sqlite_env.shop.members("u1", "u2")
    path = sqlite_env.write_config()
    assert sqlite_env.cli("run-once", "--config", str(path)).returncode == 0
    for command in (["migrate"], ["status"], ["history"], ["failures"], ["plan"],
                    ["approve", "--audience", "buyers"]):
        result = _without_keys(sqlite_env, *command, "--config", str(path))
        assert result.returncode == 0, (command, result.stderr)
        assert "Traceback" not in result.stderr


def test_commands_that_send_need_the_keys_before_any_database_or_network(sqlite_env: Env) -> None:
    sqlite_env.shop.members("u1")
    path = sqlite_env.write_config()
    for command in (["run-once"], ["run"], ["resync", "--audience", "buyers"], ["retry"]):
        result = _without_keys(sqlite_env, *command, "--config", str(path))
        assert result.returncode == 2, (command, result.stderr)
        assert result.stderr.splitlines() == [
            f"syncd: {path}: destinations.nat.api_key_env: environment variable NAT_API_KEY is not set"]
    assert not (sqlite_env.tmp_path / "state.db").exists()
    assert sqlite_env.nat.requests == sqlite_env.usercom.requests == 0


def test_a_relative_key_file_is_read_beside_the_config_and_warned_about_once(sqlite_env: Env) -> None:
    sqlite_env.shop.members("u1")
    path = sqlite_env.write_config()
    path.write_text(path.read_text().replace('api_key_env = "NAT_API_KEY"', 'api_key_file = "nat.key"'))
    key_file = sqlite_env.tmp_path / "nat.key"
    key_file.write_text(NAT_KEY + "\n")
    key_file.chmod(0o644)
    elsewhere = sqlite_env.tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = run_cli("run-once", "--config", str(path), cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "readable by other users" in line]
    assert len(warnings) == 1 and str(key_file) in warnings[0]
    assert len(sqlite_env.nat.accepted()) == 1


def test_output_into_a_closed_pipe_ends_quietly(sqlite_env: Env) -> None:
    """`syncd status --json | head -1`, the reader gone before syncd writes: no traceback,
    no "Exception ignored", the command's own exit status."""
    sqlite_env.shop.members("u1", "u2")
    path = sqlite_env.write_config()
    sqlite_env.cli("run-once", "--config", str(path))
    for args in (("status", "--json"), ("history",), ("plan", "--json"), ("failures",)):
        read_end, write_end = os.pipe()
        os.close(read_end)  # the reader has gone: every write gets EPIPE
        try:
            process = subprocess.run([sys.executable, "-m", "syncd", *args, "--config", str(path)],
                                     cwd=sqlite_env.tmp_path, env={**_env(), **KEYS_ENV}, stdout=write_end,
                                     stderr=subprocess.PIPE, text=True, timeout=60, check=False)
        finally:
            os.close(write_end)
        assert (process.returncode, process.stderr) == (0, ""), args


def test_usage_errors_follow_the_log_format(sqlite_env: Env) -> None:
    path = str(sqlite_env.write_config())
    cases = [
        (("frob", "--log-format", "json"), "invalid choice: 'frob'"),
        (("--log-format", "json", "frob"), "invalid choice: 'frob'"),
        (("resync", "--config", path, "--log-format", "json"), "arguments are required: --audience"),
        (("approve", "--log-format=json", "--config", path), "arguments are required: --audience"),
        (("history", "--limit", "0", "--log-format", "json"), "'0' is not a positive whole number"),
    ]
    for args, message in cases:
        result = sqlite_env.cli(*args)
        assert result.returncode == 2 and result.stdout == "", args
        lines = result.stderr.splitlines()
        assert len(lines) == 1, args
        entry = json.loads(lines[0])
        assert entry["level"] == "error" and message in entry["message"], args
        assert entry["usage"].startswith("usage: syncd")
    text = sqlite_env.cli("history", "--limit", "0")
    assert text.returncode == 2
    assert text.stderr.startswith("usage: syncd history")
    assert "syncd history: error: argument --limit: '0' is not a positive whole number" in text.stderr



# Runs main() in a fresh interpreter, then names the heavy libraries it loaded.
_LOADED_AFTER = """
import sys
from syncd.cli.main import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
heavy = ("sqlalchemy", "sqlmodel", "alembic", "httpx")
print("LOADED", sorted({name.split(".")[0] for name in sys.modules} & set(heavy)), file=sys.stderr)
"""
_CONFIG = """
[state]
url = "sqlite:///state.db"
[sources.shop]
url = "sqlite:///shop.db"
[destinations.nat]
type = "nat"
endpoint = "http://127.0.0.1:9/segment"
api_key_env = "NAT_API_KEY"
[[audiences]]
name = "Buyers"
source = "shop"
destinations = ["%s"]
query = "SELECT 1 AS user_id"
"""


def _loaded_after(tmp_path: Path, *args: str) -> str:
    result = subprocess.run([sys.executable, "-c", _LOADED_AFTER, *args], cwd=tmp_path, env=_env(),
                            capture_output=True, text=True, timeout=60, check=False)
    return [line for line in result.stderr.splitlines() if line.startswith("LOADED")][-1]


def test_help_and_config_errors_do_not_load_the_database_or_http_libraries(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text(_CONFIG % "nat", encoding="utf-8")
    # A mistake found late (after the state and source URLs were read) loads them no more than --help.
    bad.write_text(_CONFIG % "nowhere", encoding="utf-8")
    assert _loaded_after(tmp_path, "--help") == "LOADED []"
    assert _loaded_after(tmp_path, "status", "--config", str(bad)) == "LOADED []"
    # The probe sees them when they are loaded: a command that opens the state database.
    assert "'sqlalchemy'" in _loaded_after(tmp_path, "migrate", "--config", str(good))
