"""config.toml: what is accepted, and every mistake exits 2 with one line naming
file, key path and problem, before any database or network is touched."""

from __future__ import annotations

import logging
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from syncd.config import SecretSource, load_config, parse_duration
from syncd.errors import ConfigError
from syncd.keys import audience_key

from conftest import KEYS_ENV, run_cli

GOOD = """
[state]
url = "sqlite:///state.db"

[schedule]
interval = "2h"
jitter = "1h"

[sources.shop]
url = "sqlite:///shop.db"

[destinations.nat]
type = "nat"
endpoint = "https://nat.example/segment"
api_key_env = "NAT_API_KEY"

[destinations.usercom]
type = "usercom"
base_url = "https://myapp.user.com/api/public"
api_key_env = "USERCOM_API_KEY"
rate_limit = 20
concurrency = 4
timeout = "15s"

[[audiences]]
name = "Order Completed Last 30 Days"
source = "shop"
destinations = ["nat", "usercom"]
query = "SELECT id AS user_id, email FROM customers"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_good_config_loads_into_frozen_objects(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD), KEYS_ENV)
    assert config.schedule.interval == timedelta(hours=2)
    assert config.audiences[0].key == "order_completed_last_30_days"
    usercom = config.destinations["usercom"]
    assert usercom.url == "https://myapp.user.com/api/public/"  # trailing slash added
    assert (usercom.rate_limit, usercom.concurrency, usercom.timeout) == (20.0, 4, 15.0)
    assert usercom.api_key == SecretSource(str(tmp_path / "config.toml"), "destinations.usercom.api_key_env",
                                           env="USERCOM_API_KEY")  # read only by commands that send
    resolved = config.with_secrets()
    assert resolved.destinations["usercom"].resolved_key.reveal() == KEYS_ENV["USERCOM_API_KEY"]
    assert KEYS_ENV["USERCOM_API_KEY"] not in repr(resolved)


def test_retention_and_per_type_pacing_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD), KEYS_ENV)
    assert config.retention == timedelta(days=30)
    nat = config.destinations["nat"]
    assert (nat.rate_limit, nat.concurrency) == (20.0, 8)
    text = GOOD.replace("rate_limit = 20\nconcurrency = 4\n", "").replace(
        'url = "sqlite:///state.db"', 'url = "sqlite:///state.db"\nretention = "7d"')
    config = load_config(write(tmp_path, text), KEYS_ENV)
    usercom = config.destinations["usercom"]
    assert (config.retention, usercom.rate_limit, usercom.concurrency) == (timedelta(days=7), 10.0, 4)


def test_bulk_size_is_a_user_com_key_with_a_conservative_default(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD), KEYS_ENV)
    assert (config.destinations["usercom"].bulk_size, config.destinations["nat"].bulk_size) == (100, None)
    config = load_config(write(tmp_path, GOOD.replace("concurrency = 4", "bulk_size = 500")), KEYS_ENV)
    assert config.destinations["usercom"].bulk_size == 500


def test_a_run_may_send_for_one_interval_unless_told_otherwise(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, GOOD), KEYS_ENV).schedule.send_limit == timedelta(hours=2)
    text = GOOD.replace('jitter = "1h"', 'jitter = "1h"\nmax_send_time = "45m"')
    assert load_config(write(tmp_path, text), KEYS_ENV).schedule.send_limit == timedelta(minutes=45)


def test_guards_default_and_per_audience_exit_share(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, GOOD), KEYS_ENV).audiences[0].max_exit_share == 0.5
    text = GOOD.replace("[sources.shop]", "[guards]\nmax_exit_share = 0.2\nmin_acknowledged = 100\n"
                        "[sources.shop]")
    text += 'max_exit_share = 1\n[[audiences]]\nname = "Other"\nsource = "shop"\n' \
        'destinations = ["nat"]\nquery = "SELECT 1 AS user_id"\n'
    config = load_config(write(tmp_path, text), KEYS_ENV)
    assert (config.guards.max_exit_share, config.guards.min_acknowledged) == (0.2, 100)
    assert [a.max_exit_share for a in config.audiences] == [1.0, 0.2]  # its own, else [guards]


def test_api_key_file(tmp_path: Path) -> None:
    key_file = tmp_path / "nat.key"
    key_file.write_text("file-key\n")
    key_file.chmod(0o600)
    text = GOOD.replace('api_key_env = "NAT_API_KEY"', f'api_key_file = "{key_file}"')
    config = load_config(write(tmp_path, text), KEYS_ENV).with_secrets()
    assert config.destinations["nat"].resolved_key.reveal() == "file-key"


def test_relative_api_key_file_is_beside_the_config_not_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "etc" / "syncd"
    (folder / "keys").mkdir(parents=True)
    (folder / "keys" / "nat").write_text("beside-the-config\n")
    (folder / "keys" / "nat").chmod(0o600)
    elsewhere = tmp_path / "work"
    (elsewhere / "keys").mkdir(parents=True)
    (elsewhere / "keys" / "nat").write_text("in-the-working-directory\n")
    monkeypatch.chdir(elsewhere)
    text = GOOD.replace('api_key_env = "NAT_API_KEY"', 'api_key_file = "keys/nat"')
    config = load_config(write(folder, text), KEYS_ENV).with_secrets()
    assert config.destinations["nat"].resolved_key.reveal() == "beside-the-config"


def test_a_key_file_others_can_read_is_warned_about_when_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key_file = tmp_path / "nat.key"
    key_file.write_text("file-key-readable-by-all\n")
    key_file.chmod(0o644)
    text = GOOD.replace('api_key_env = "NAT_API_KEY"', f'api_key_file = "{key_file}"')
    config = load_config(write(tmp_path, text), KEYS_ENV)
    assert not caplog.records  # loading does not read it
    with caplog.at_level(logging.WARNING, logger="syncd"):
        config.with_secrets()
    [record] = caplog.records
    assert str(key_file) in record.getMessage() and "readable by other users" in record.getMessage()
    assert "file-key" not in caplog.text

    caplog.clear()
    key_file.chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="syncd"):
        config.with_secrets()
    assert not caplog.records


@pytest.mark.parametrize(("name", "key"), [
    ("Order Completed Last 30 Days", "order_completed_last_30_days"),
    ("High-Value Users (EU)", "high_value_users_eu"),
    ("OrderCompletedLast30Days", "order_completed_last30_days"),
])
def test_audience_key_is_the_snake_cased_name(name: str, key: str) -> None:
    assert audience_key(name) == key


@pytest.mark.parametrize(("text", "expected"), [
    ("90s", timedelta(seconds=90)), ("15m", timedelta(minutes=15)), ("2h", timedelta(hours=2)),
    ("1h30m", timedelta(hours=1, minutes=30)), ("1d", timedelta(days=1)),
])
def test_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


MISTAKES = [
    ("malformed TOML", ("[state", ""), "", "malformed TOML"),
    ("unknown top-level key", ("[state]", "colour = 1\n[state]"), "colour", "unknown key"),
    ("unknown nested key", ('type = "nat"', 'type = "nat"\nendpiont = "x"'),
     "destinations.nat.endpiont", "unknown key"),
    ("missing source", ('source = "shop"', 'source = "warehouse"'),
     "audiences[0] (Order Completed Last 30 Days).source", "no [sources.warehouse]"),
    ("unknown destination", ('destinations = ["nat", "usercom"]', 'destinations = ["nat", "hubspot"]'),
     "audiences[0] (Order Completed Last 30 Days).destinations", "no [destinations.hubspot]"),
    ("bad duration", ('interval = "2h"', 'interval = "2 hours"'), "schedule.interval", "not a duration"),
    ("both secret sources",
     ('api_key_env = "NAT_API_KEY"', 'api_key_env = "NAT_API_KEY"\napi_key_file = "k"'), "destinations.nat",
     "set only one of api_key_env or api_key_file"),
    ("unknown destination type", ('type = "nat"', 'type = "hubspot"'), "destinations.nat.type",
     "unknown type"),
    ("endpoint not a URL", ('endpoint = "https://nat.example/segment"', 'endpoint = "nat.example"'),
     "destinations.nat.endpoint", "not an http(s) URL"),
    ("wrong type", ("concurrency = 4", 'concurrency = "four"'), "destinations.usercom.concurrency",
     "must be int"),
    ("bad state URL", ('url = "sqlite:///state.db"', 'url = "not a url"'), "state.url", "not a database URL"),
    ("bad retention", ('url = "sqlite:///state.db"', 'url = "sqlite:///state.db"\nretention = "30 days"'),
     "state.retention", "not a duration"),
    ("retention too short", ('url = "sqlite:///state.db"', 'url = "sqlite:///state.db"\nretention = "2h"'),
     "state.retention", "must be between 1d and 3650d, not '2h'"),
    ("in-memory state", ('url = "sqlite:///state.db"', 'url = "sqlite://"'), "state.url",
     "an in-memory database keeps nothing between runs"),
    ("run time limit too short", ('jitter = "1h"', 'jitter = "1h"\nmax_send_time = "30s"'),
     "schedule.max_send_time", "must be between 1m and 30d, not '30s'"),
    ("zero rate limit", ("rate_limit = 20", "rate_limit = 0"), "destinations.usercom.rate_limit",
     "must be between 0.1 and 1000, not 0"),
    ("exit share above 1", ("[sources.shop]", "[guards]\nmax_exit_share = 1.5\n[sources.shop]"),
     "guards.max_exit_share", "must be between 0 and 1 (a share), not 1.5"),
    ("exit share not a number", ("[sources.shop]", '[guards]\nmax_exit_share = "half"\n[sources.shop]'),
     "guards.max_exit_share", "must be float, not a string"),
    ("negative minimum", ("[sources.shop]", "[guards]\nmin_acknowledged = -1\n[sources.shop]"),
     "guards.min_acknowledged", "must be between 0 and 1_000_000_000, not -1"),
    ("unknown guards key", ("[sources.shop]", "[guards]\nmax_exits = 3\n[sources.shop]"),
     "guards.max_exits", "unknown key"),
    ("audience exit share below 0", ('source = "shop"', 'source = "shop"\nmax_exit_share = -0.1'),
     "audiences[0] (Order Completed Last 30 Days).max_exit_share", "must be between 0 and 1"),
    ("metrics listen without host", ("[state]", '[metrics]\nlisten = "9464"\n[state]'), "metrics.listen",
     "'9464' is not host:port"),
    ("metrics listen as a URL", ("[state]", '[metrics]\nlisten = "http://localhost:9464"\n[state]'),
     "metrics.listen", "is not host:port"),
    ("metrics port out of range", ("[state]", '[metrics]\nlisten = "127.0.0.1:70000"\n[state]'),
     "metrics.listen", "port 70000 is out of range"),
    ("metrics listen not a string", ("[state]", "[metrics]\nlisten = 9464\n[state]"), "metrics.listen",
     "must be str"),
    ("unknown metrics key", ("[state]", "[metrics]\nport = 9464\n[state]"), "metrics.port", "unknown key"),
]


AUDIENCE = "audiences[0] (Order Completed Last 30 Days)"
# Reserved keys, URLs with credentials, numbers out of their bounds (issue 10).
LONG_NAME = "Customers Who Ordered Twice In The Last Thirty Days " * 9  # 467 characters
LONG_KEY = audience_key(LONG_NAME)
# Key lengths (SPEC 2): User.com names attributes with at most 32 characters, syncd takes 64.
MISTAKES += [
    ("key too long for User.com", ('source = "shop"', f'key = "{"k" * 33}"\nsource = "shop"'),
     f"{AUDIENCE}.key", f"'{'k' * 33}' is 33 characters, over the limit at User.com (destination "
     f'usercom) of 32: set a shorter key, e.g. key = "{"k" * 32}"'),
    ("name too long for any key", (f'name = "{AUDIENCE[14:-1]}"\nsource = "shop"\n'
                                   'destinations = ["nat", "usercom"]',
                                   f'name = "{LONG_NAME}"\nsource = "shop"\ndestinations = ["nat"]'),
     f"audiences[0] ({LONG_NAME}).key",
     f"'{LONG_KEY[:40]}…' (the snake_cased name) is {len(LONG_KEY)} characters, over syncd's limit of "
     f'64: set a shorter key, e.g. key = "{LONG_KEY[:64].rstrip("_")}"'),
]


def test_a_key_of_64_characters_is_fine_where_user_com_does_not_get_it(tmp_path: Path) -> None:
    text = GOOD.replace('source = "shop"', f'key = "{"k" * 64}"\nsource = "shop"').replace(
        'destinations = ["nat", "usercom"]', 'destinations = ["nat"]')
    assert load_config(write(tmp_path, text), KEYS_ENV).audiences[0].key == "k" * 64


MISTAKES += [
    ("key of a field syncd sends", ('source = "shop"', 'key = "custom_id"\nsource = "shop"'),
     f"{AUDIENCE}.key", "'custom_id' is a field syncd sends itself (reserved); choose another key"),
    ("key of a User.com standard attribute", ('source = "shop"', 'key = "first_name"\nsource = "shop"'),
     f"{AUDIENCE}.key", "'first_name' is a field syncd sends itself (reserved)"),
    ("name whose key is reserved", ('name = "Order Completed Last 30 Days"', 'name = "Email"'),
     "audiences[0] (Email).key", "'email' (the snake_cased name 'Email') is a field syncd sends itself"),
    ("empty key", ('source = "shop"', 'key = ""\nsource = "shop"'), f"{AUDIENCE}.key", "must not be empty"),
    ("name that snake-cases to nothing", ('name = "Order Completed Last 30 Days"', 'name = "Клиенты"'),
     "audiences[0] (Клиенты).key", "the name 'Клиенты' gives no key"),
    ("credentials in endpoint", ('endpoint = "https://nat.example/segment"',
                                 'endpoint = "https://user:hunter2@nat.example/segment"'),
     "destinations.nat.endpoint", "must not contain user information"),
    ("credentials in base_url", ('base_url = "https://myapp.user.com/api/public"',
                                 'base_url = "http://token-hunter2@myapp.user.com/api/public"'),
     "destinations.usercom.base_url", "must not contain user information"),
    ("credentials in a non-http URL", ('endpoint = "https://nat.example/segment"',
                                       'endpoint = "ftp://user:hunter2@nat.example/segment"'),
     "destinations.nat.endpoint", "must not contain user information"),
    ("endpoint with a bad port", ('endpoint = "https://nat.example/segment"',
                                  'endpoint = "https://nat.example:99999/segment"'),
     "destinations.nat.endpoint", "has an invalid port"),
    ("rate limit nan", ("rate_limit = 20", "rate_limit = nan"), "destinations.usercom.rate_limit",
     "must be between 0.1 and 1000, not nan"),
    ("rate limit inf", ("rate_limit = 20", "rate_limit = inf"), "destinations.usercom.rate_limit",
     "must be between 0.1 and 1000, not inf"),
    ("negative rate limit", ("rate_limit = 20", "rate_limit = -5"), "destinations.usercom.rate_limit",
     "must be between 0.1 and 1000, not -5"),
    ("tiny rate limit", ("rate_limit = 20", "rate_limit = 1e-300"), "destinations.usercom.rate_limit",
     "must be between 0.1 and 1000"),
    ("zero concurrency", ("concurrency = 4", "concurrency = 0"), "destinations.usercom.concurrency",
     "must be between 1 and 256, not 0"),
    ("huge concurrency", ("concurrency = 4", "concurrency = 100000"), "destinations.usercom.concurrency",
     "must be between 1 and 256, not 100_000"),
    ("interval beyond datetime arithmetic", ('interval = "2h"', 'interval = "99999999d"'),
     "schedule.interval", "must be between 1m and 30d, not '99999999d'"),
    ("interval beyond timedelta", ('interval = "2h"', 'interval = "9999999999d"'), "schedule.interval",
     "'9999999999d' is far too long"),
    ("huge jitter", ('jitter = "1h"', 'jitter = "400d"'), "schedule.jitter", "must be between 0s and 30d"),
    ("huge timeout", ('timeout = "15s"', 'timeout = "2h"'), "destinations.usercom.timeout",
     "must be between 1s and 5m, not '2h'"),
    ("zero timeout", ('timeout = "15s"', 'timeout = "0s"'), "destinations.usercom.timeout",
     "must be between 1s and 5m"),
    ("huge retention", ('url = "sqlite:///state.db"', 'url = "sqlite:///state.db"\nretention = "999999d"'),
     "state.retention", "must be between 1d and 3650d"),
    ("exit share nan", ("[sources.shop]", "[guards]\nmax_exit_share = nan\n[sources.shop]"),
     "guards.max_exit_share", "must be between 0 and 1 (a share), not nan"),
    ("bulk size at Nat", ('type = "nat"', 'type = "nat"\nbulk_size = 10'), "destinations.nat.bulk_size",
     "unknown key"),
    ("zero bulk size", ("concurrency = 4", "bulk_size = 0"), "destinations.usercom.bulk_size",
     "must be between 1 and 1_000, not 0"),
    ("huge bulk size", ("concurrency = 4", "bulk_size = 5000"), "destinations.usercom.bulk_size",
     "must be between 1 and 1_000, not 5_000"),
    ("bulk size not an integer", ("concurrency = 4", "bulk_size = 1.5"), "destinations.usercom.bulk_size",
     "must be int"),
    ("huge minimum", ("[sources.shop]", "[guards]\nmin_acknowledged = 99999999999999999999\n[sources.shop]"),
     "guards.min_acknowledged", "must be between 0 and 1_000_000_000"),
]


@pytest.mark.parametrize(("label", "edit", "key", "problem"), MISTAKES, ids=[m[0] for m in MISTAKES])
def test_config_mistakes_exit_2_with_one_line_before_any_io(
    tmp_path: Path, label: str, edit: tuple[str, str], key: str, problem: str
) -> None:
    old, new = edit
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(ConfigError) as info:
        load_config(path, KEYS_ENV)
    assert info.value.key == key and problem in info.value.problem

    result = run_cli("run-once", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"syncd: {path}: ")
    assert problem in lines[0] and "Traceback" not in result.stderr
    assert "hunter2" not in result.stderr  # a password in a URL is never echoed
    assert not (tmp_path / "state.db").exists()  # nothing touched


SECRET_MISTAKES = [
    ("missing secret variable", ('api_key_env = "NAT_API_KEY"', 'api_key_env = "NO_SUCH_VAR"'),
     "destinations.nat.api_key_env", "environment variable NO_SUCH_VAR is not set"),
    ("missing secret file", ('api_key_env = "NAT_API_KEY"', 'api_key_file = "/nonexistent/nat.key"'),
     "destinations.nat.api_key_file", "cannot read /nonexistent/nat.key"),
]


@pytest.mark.parametrize(("label", "edit", "key", "problem"), SECRET_MISTAKES,
                         ids=[m[0] for m in SECRET_MISTAKES])
def test_a_missing_secret_is_a_config_error_of_the_commands_that_send(
    tmp_path: Path, label: str, edit: tuple[str, str], key: str, problem: str
) -> None:
    path = write(tmp_path, GOOD.replace(*edit, 1))
    config = load_config(path, KEYS_ENV)  # loading reads no secret: read-only commands work
    with pytest.raises(ConfigError) as info:
        config.with_secrets()
    assert info.value.key == key and problem in info.value.problem

    result = run_cli("run-once", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"syncd: {path}: {key}: {info.value.problem}"]
    assert not (tmp_path / "state.db").exists()  # nothing touched


@pytest.mark.parametrize(("listen", "host", "port"), [
    ("127.0.0.1:9464", "127.0.0.1", 9464), ("[::1]:9464", "::1", 9464), ("localhost:80", "localhost", 80),
])
def test_metrics_listen(tmp_path: Path, listen: str, host: str, port: int) -> None:
    config = load_config(write(tmp_path, f'[metrics]\nlisten = "{listen}"\n' + GOOD), KEYS_ENV)
    assert config.metrics is not None
    assert (config.metrics.host, config.metrics.port) == (host, port)


def test_metrics_are_off_by_default(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, GOOD), KEYS_ENV).metrics is None


def test_duplicate_audience_key(tmp_path: Path) -> None:
    text = GOOD + textwrap.dedent("""
        [[audiences]]
        name = "Order completed last 30 days"
        source = "shop"
        destinations = ["nat"]
        query = "SELECT 1 AS user_id"
    """)
    with pytest.raises(ConfigError, match="'order_completed_last_30_days' is already used"):
        load_config(write(tmp_path, text), KEYS_ENV)


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    result = run_cli("status", "--config", str(tmp_path / "nope.toml"), cwd=tmp_path)
    assert result.returncode == 2 and "file not found" in result.stderr


def test_usage_error_exits_2(tmp_path: Path) -> None:
    assert run_cli("frobnicate", cwd=tmp_path).returncode == 2
