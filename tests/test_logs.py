"""--log-format json: every stderr line one JSON object, for log shippers."""

from __future__ import annotations

import json
import logging
import re
import sys

import pytest

from syncd.cli.logs import JsonFormatter

from conftest import NAT_KEY, USERCOM_KEY, Env

TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def _json_lines(stderr: str) -> list[dict[str, object]]:
    lines = stderr.splitlines()
    assert lines, "no log output"
    return [json.loads(line) for line in lines]  # fails on any non-JSON line


@pytest.mark.parametrize("where", ["global", "subcommand"])
def test_run_once_logs_one_json_object_per_line(sqlite_env: Env, where: str) -> None:
    sqlite_env.shop.members("u1", "u2")
    path = str(sqlite_env.write_config())
    args = (["--log-format", "json", "run-once", "--config", path] if where == "global"
            else ["run-once", "--config", path, "--log-format", "json"])
    result = sqlite_env.cli(*args)

    assert result.returncode == 0, result.stderr
    entries = _json_lines(result.stderr)
    for entry in entries:
        assert TIME.match(str(entry["time"])), entry
        assert {"level", "logger", "message"} <= entry.keys()
    summary = next(e for e in entries if str(e["message"]).startswith("nat: "))
    assert summary["level"] == "info" and summary["logger"] == "syncd"
    assert summary["outcome"] == "ok" and isinstance(summary["run_id"], int)  # structured extras
    assert NAT_KEY not in result.stderr and USERCOM_KEY not in result.stderr


def test_a_config_error_is_json_too_and_exits_2(sqlite_env: Env) -> None:
    path = sqlite_env.write_config(nat_key_env="NO_SUCH_VARIABLE")
    result = sqlite_env.cli("--log-format", "json", "run-once", "--config", str(path))

    assert result.returncode == 2
    [entry] = _json_lines(result.stderr)
    assert entry["level"] == "error"
    assert entry["config_key"] == "destinations.nat.api_key_env"
    assert "NO_SUCH_VARIABLE is not set" in str(entry["message"])


def test_text_stays_the_default(sqlite_env: Env) -> None:
    sqlite_env.shop.members("u1")
    result = sqlite_env.cli("run-once", "--config", str(sqlite_env.write_config()))
    assert result.returncode == 0
    assert any(line.startswith("INFO nat: ") for line in result.stderr.splitlines())


def test_unknown_log_format_is_a_usage_error(sqlite_env: Env) -> None:
    result = sqlite_env.cli("--log-format", "xml", "status")
    assert result.returncode == 2 and "invalid choice: 'xml'" in result.stderr


def test_formatter_keeps_extras_and_exceptions() -> None:
    record = logging.LogRecord("syncd", logging.WARNING, __file__, 1, "%d pending", (3,), None)
    record.destination = "nat"
    try:
        raise ValueError("boom")
    except ValueError:
        record.exc_info = sys.exc_info()
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "3 pending" and entry["level"] == "warning"
    assert entry["destination"] == "nat"
    assert "ValueError: boom" in entry["exception"]
    assert TIME.match(entry["time"])
