"""DuckDB as a source: an audience straight from a Parquet file (and a CSV file) that the test
writes, with a `:now` window and typed traits; a DuckDB database file; `check --connect`;
SIGTERM during a slow query (DuckDB's interrupt)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
from test_source import _assert_stopped_and_kept, _same_json, _stop_mid_snapshot, _traits

from syncd.config import load_config

from checks import flags
from conftest import KEYS_ENV, Env, audience_toml, dump_state

MEMBERS = """
SELECT 'u' || i AS user_id, 'u' || i || '@example.com' AS email, i * 1.25 AS score,
       TIMESTAMP '2026-11-20 10:00:00' - i * INTERVAL 10 DAY AS last_order_at,
       {'plan': 'pro', 'seats': i} AS account, [i, i + 1] AS tags, i % 2 = 0 AS even
FROM range(1, 5) AS r(i)
"""


def _write(env: Env, url: str, query: str, destinations: tuple[str, ...] = ("nat", "usercom")) -> Path:
    audiences = audience_toml("Buyers", list(destinations), query=query).replace('source = "shop"',
                                                                                 'source = "files"')
    return env.write_config(audiences=audiences, extra=f'\n[sources.files]\nurl = "{url}"\n')


def _copy(select: str, path: Path, kind: str) -> None:
    with duckdb.connect() as db:
        db.execute(f"COPY ({select}) TO '{path}' (FORMAT {kind})")


def test_an_audience_straight_from_a_parquet_file(sqlite_env: Env) -> None:
    env = sqlite_env
    members = env.tmp_path / "members.parquet"
    _copy(MEMBERS, members, "PARQUET")
    query = (f"SELECT user_id, email, score, account, tags, even, last_order_at FROM '{members}'\n"
             "WHERE last_order_at <= :now AND last_order_at >= TIMESTAMP '2026-11-20' - INTERVAL 30 DAY")
    path = _write(env, "duckdb:///:memory:", query)

    report = load_and_run(env, path)

    assert report.exit_code == 0, report.audience_errors
    assert flags(env.nat.accepted()) == {"u1": True, "u2": True, "u3": True}
    nat, usercom = _traits(env, "u2")
    expected = {"score": 2.5, "account": {"plan": "pro", "seats": 2}, "tags": [2, 3], "even": True,
                "last_order_at": "2026-10-31T10:00:00.000Z"}
    _same_json(nat, expected)
    _same_json(usercom, expected)


def test_now_is_a_timestamp_in_duckdb(sqlite_env: Env) -> None:
    """A row stamped in the future is not yet a member: `:now` compares as a TIMESTAMP."""
    env = sqlite_env
    members = env.tmp_path / "members.csv"
    _copy("SELECT 'past' AS user_id, TIMESTAMP '2001-01-01 00:00:00' AS joined UNION ALL "
          "SELECT 'future', TIMESTAMP '2999-01-01 00:00:00'", members, "CSV")
    query = (f"SELECT user_id, user_id || '@example.com' AS email, typeof(:now) AS now_type "
             f"FROM read_csv('{members}')\n"
             "WHERE joined <= :now AND joined > :now - INTERVAL 100 YEAR")

    report = load_and_run(env, _write(env, "duckdb:///:memory:", query, ("nat",)))

    assert report.exit_code == 0, report.audience_errors
    assert flags(env.nat.accepted()) == {"past": True}
    assert env.nat.accepted()[0]["traits"]["now_type"] == "TIMESTAMP"


def test_a_duckdb_database_file_is_read_and_a_missing_one_is_not_created(sqlite_env: Env) -> None:
    env = sqlite_env
    database = env.tmp_path / "warehouse.duckdb"
    with duckdb.connect(str(database)) as db:
        db.execute(f"CREATE TABLE members AS {MEMBERS}")
    path = _write(env, f"duckdb:///{database}", "SELECT user_id, email FROM members", ("nat",))

    assert load_and_run(env, path).exit_code == 0
    assert flags(env.nat.accepted()) == {"u1": True, "u2": True, "u3": True, "u4": True}

    missing = env.tmp_path / "typo.duckdb"
    report = load_and_run(env, _write(env, f"duckdb:///{missing}", "SELECT user_id FROM members"))
    assert report.audience_errors == {
        "buyers": f"query failed on source 'files': source database file {missing} does not exist"}
    assert not missing.exists()


def test_check_connect_on_duckdb(sqlite_env: Env) -> None:
    env = sqlite_env
    members = env.tmp_path / "members.parquet"
    _copy(MEMBERS, members, "PARQUET")
    path = _write(env, "duckdb:///:memory:", f"SELECT user_id, email FROM '{members}' -- all\n"
                                             "WHERE last_order_at <= :now")

    result = env.cli("check", "--connect", "--json", "--config", str(path))

    assert result.returncode == 0, result.stdout + result.stderr
    audience = next(c for c in json.loads(result.stdout) if c["check"] == "audience")
    assert audience["message"] == "query OK; columns: user_id, email"


SLOW = """
SELECT user_id, email FROM members
WHERE (SELECT count(*) FROM range((SELECT n FROM slowness)) a, range(1000) b) >= 0
"""


def test_sigterm_interrupts_a_slow_duckdb_query(sqlite_env: Env) -> None:
    env = sqlite_env
    database = env.tmp_path / "warehouse.duckdb"
    with duckdb.connect(str(database)) as db:
        db.execute("CREATE TABLE members (user_id TEXT, email TEXT)")
        db.execute("INSERT INTO members VALUES ('u1', 'u1@example.com'), ('u2', 'u2@example.com')")
        db.execute("CREATE TABLE slowness AS SELECT 1::BIGINT AS n")
    path = _write(env, f"duckdb:///{database}", SLOW, ("nat",))
    assert env.cli("run-once", "--config", str(path)).returncode == 0
    with duckdb.connect(str(database)) as db:
        db.execute("DELETE FROM members WHERE user_id = 'u1'")
        db.execute("INSERT INTO members VALUES ('u3', 'u3@example.com')")
        db.execute("UPDATE slowness SET n = 10000000000")  # 10^13 rows: hours of counting

    result = _stop_mid_snapshot(env, path, lambda: "'running'" in dump_state(env.state_url))

    _assert_stopped_and_kept(env, result, path)
    with duckdb.connect(str(database)) as db:
        db.execute("UPDATE slowness SET n = 1")
    assert env.cli("run-once", "--config", str(path)).returncode == 0
    assert flags(env.nat.accepted()) == {"u1": False, "u2": True, "u3": True}


def load_and_run(env: Env, path: Path) -> Any:
    return env.run(load_config(path, KEYS_ENV))

