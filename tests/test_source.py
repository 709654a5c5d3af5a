"""Source queries against real SQLite and PostgreSQL sources: what extra columns become at the
destinations, queries as written (casts, colons in literals), the columns a query may not
have, the database's own error message, and a stop request cancelling a slow query."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from syncd.identify import json_value
from syncd.source import bind_now
from syncd.state.engine import cancelled_on

from checks import flags
from conftest import (
    POSTGRES_URL,
    Env,
    _fresh_postgres_database,
    audience_toml,
    dump_state,
    signal_a_thread,
    wait_for,
)


@pytest.fixture
def pg_source() -> Iterator[str]:
    """A fresh PostgreSQL database to use as a source."""
    if not POSTGRES_URL:
        pytest.skip("PostgreSQL source tests need SYNCD_TEST_POSTGRES_URL")
    yield from _fresh_postgres_database(POSTGRES_URL)


def _sql(url: str, *statements: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.execute(text(statement))
    finally:
        engine.dispose()


def _pg_audience(query: str, name: str = "Buyers") -> str:
    return audience_toml(name, ["nat", "usercom"], query=query).replace('source = "shop"', 'source = "pg"')


def _pg_config(env: Env, url: str, audiences: str) -> Any:
    return env.config(audiences=audiences, extra=f'\n[sources.pg]\nurl = "{url}"\n')


def _traits(env: Env, user: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The extra traits Nat and User.com received for `user` (identity and flag left out)."""
    nat = next(c["traits"] for c in env.nat.accepted() if c["userId"] == user)
    usercom = next(c for c in env.usercom.accepted() if c.get("custom_id") == user)
    drop = {"email", "custom_id", "buyers"}
    return ({k: v for k, v in nat.items() if k not in drop},
            {k: v for k, v in usercom.items() if k not in drop})


def _same_json(got: dict[str, Any], expected: dict[str, Any]) -> None:
    """Equal as JSON text: 7 and 7.0, or 1 and true, are different here."""
    assert json.dumps(got, sort_keys=True) == json.dumps(expected, sort_keys=True)


# --- extra traits keep their types --------------------------------------------------------


def test_extra_traits_keep_their_types_from_postgresql(sqlite_env: Env, pg_source: str) -> None:
    env = sqlite_env
    _sql(pg_source,
         "CREATE TABLE people (id text, email text, score numeric, visits numeric, orders bigint, "
         "ratio double precision, seen timestamptz, seen_local timestamp, born date, prefs jsonb, "
         "raw json, tags int[], names text[], vip bool, note text)",
         "INSERT INTO people VALUES ('u1', 'u1@example.com', 3.5, 7, 12, 0.25, "
         "'2026-11-20 12:00:00+02', '2026-11-20 10:00:00', '1990-05-17', "
         "'{\"a\": 1, \"b\": [true, null], \"c\": {\"d\": \"e\"}}', '[1, \"x\"]', '{1,2}', "
         "'{\"x\",\"y\"}', true, 'hi')")
    query = ("SELECT id AS user_id, email, score, visits, orders, ratio, seen, seen_local, born, "
             "prefs, raw, tags, names, vip, note FROM people")

    report = env.run(_pg_config(env, pg_source, _pg_audience(query)))

    assert report.exit_code == 0, report.audience_errors
    expected = {"score": 3.5, "visits": 7, "orders": 12, "ratio": 0.25,
                "seen": "2026-11-20T10:00:00.000Z", "seen_local": "2026-11-20T10:00:00.000Z",
                "born": "1990-05-17", "prefs": {"a": 1, "b": [True, None], "c": {"d": "e"}},
                "raw": [1, "x"], "tags": [1, 2], "names": ["x", "y"], "vip": True, "note": "hi"}
    nat, usercom = _traits(env, "u1")
    _same_json(nat, expected)
    _same_json(usercom, expected)


def test_extra_traits_keep_their_types_from_sqlite(sqlite_env: Env) -> None:
    env = sqlite_env
    with env.shop.connect() as db:
        db.execute("CREATE TABLE people (id TEXT, email TEXT, score REAL, visits INTEGER, "
                   "big NUMERIC, note TEXT, empty TEXT)")
        db.execute("INSERT INTO people VALUES ('u1', 'u1@example.com', 3.5, 7, 12345678901234, "
                   "'hi', NULL)")
    query = "SELECT id AS user_id, email, score, visits, big, note, empty FROM people"

    report = env.run(env.config(audiences=audience_toml("Buyers", ["nat", "usercom"], query=query)))

    assert report.exit_code == 0, report.audience_errors
    nat, usercom = _traits(env, "u1")
    expected = {"score": 3.5, "visits": 7, "big": 12345678901234, "note": "hi", "empty": None}
    _same_json(nat, expected)
    _same_json(usercom, expected)


def test_json_value_keeps_types_and_texts_only_what_json_cannot_hold() -> None:
    values = {
        "whole": Decimal("10"), "part": Decimal("2.50"), "nan": Decimal("NaN"), "inf": float("inf"),
        "aware": datetime(2026, 11, 20, 12, 0, tzinfo=timezone(timedelta(hours=2))),
        "naive": datetime(2026, 11, 20, 10, 0), "day": date(1990, 5, 17),
        "nested": {"a": [Decimal("1.5"), (1, 2)], "b": None}, "raw": b"bytes",
        "id": uuid.UUID(int=1), "span": timedelta(hours=1),
    }
    converted = {k: json_value(v) for k, v in values.items()}
    _same_json(converted, {
        "whole": 10, "part": 2.5, "nan": "NaN", "inf": "inf",
        "aware": "2026-11-20T10:00:00.000Z", "naive": "2026-11-20T10:00:00.000Z", "day": "1990-05-17",
        "nested": {"a": [1.5, [1, 2]], "b": None}, "raw": "bytes",
        "id": "00000000-0000-0000-0000-000000000001", "span": "1:00:00",
    })
    assert {k: json_value(v) for k, v in converted.items()} == converted  # JSON stays as it is
    assert json_value(datetime(2026, 1, 1, tzinfo=UTC)) == "2026-01-01T00:00:00.000Z"


# --- the query as written -----------------------------------------------------------------


@pytest.mark.parametrize(("paramstyle", "marker", "params"), [
    ("qmark", "?", ("N", "N")), ("pyformat", "%(now)s", {"now": "N"}),
    ("numeric_dollar", "$1", ("N",)), ("named", ":now", {"now": "N"}),
])
def test_only_now_outside_literals_names_and_comments_is_bound(
        paramstyle: str, marker: str, params: Any) -> None:
    literal = ("SELECT 'it''s :now' AS a, E'\\':now' AS b, \"x:now\" AS c, $$ :now $$ AS d, "
               "$q$ :now $q$ AS e, x::text AS f -- :now\n/* :now */")
    query = literal + " WHERE t < :now::timestamptz AND u = :now AND v LIKE '5%'"

    statement, bound = bind_now(query, "N", paramstyle)

    literal_out = literal.replace("%", "%%") if paramstyle == "pyformat" else literal
    tail = f" WHERE t < {marker}::timestamptz AND u = {marker} AND v LIKE '5%'"
    assert statement == literal_out + (tail.replace("'5%'", "'5%%'") if paramstyle == "pyformat" else tail)
    assert bound == params
    assert bind_now(literal + " AND v LIKE '5%'", "N", paramstyle) == (literal + " AND v LIKE '5%'", None)
    assert bind_now("SELECT :nowhere, a:now", "N", paramstyle)[1] is None




def test_casts_and_colons_in_literals_on_postgresql(sqlite_env: Env, pg_source: str) -> None:
    env = sqlite_env
    _sql(pg_source, "CREATE TABLE people (id int, email text, seen timestamptz)",
         "INSERT INTO people VALUES (1, 'u1@example.com', '2026-11-20 10:00:00+00'), "
         "(2, 'u2@example.com', '2999-01-01 00:00:00+00')")
    query = """
        SELECT id::text AS user_id, email, '{"a":1}'::jsonb AS meta, 'x:y' AS "label:1",
               $$ :now is 100% literal here $$ AS dollar  -- a comment with :now and 'a quote
        FROM people
        WHERE seen <= :now::timestamptz /* :now */ AND email LIKE '%@example.com'
    """

    report = env.run(_pg_config(env, pg_source, _pg_audience(query)))

    assert report.exit_code == 0, report.audience_errors
    assert flags(env.nat.accepted()) == {"1": True}  # u2's timestamp is after :now
    nat, _ = _traits(env, "1")
    _same_json(nat, {"meta": {"a": 1}, "label:1": "x:y", "dollar": " :now is 100% literal here "})


def test_colons_in_literals_on_sqlite(sqlite_env: Env) -> None:
    env = sqlite_env
    env.shop.set(("u1", "u1@example.com", "2026-11-20 10:00:00"),
                 ("u2", "u2@example.com", "2999-01-01 00:00:00"))
    query = """
        SELECT id AS user_id, email, json('{"a":1}') AS meta, 'x:y' AS label,
               CAST(:now AS TEXT) = :now AS twice  -- :now, 'quoted' in a comment
        FROM customers WHERE last_order_at <= :now AND email LIKE '%@example.com'
    """

    report = env.run(env.config(audiences=audience_toml("Buyers", ["nat"], query=query)))

    assert report.exit_code == 0, report.audience_errors
    assert flags(env.nat.accepted()) == {"u1": True}
    nat = env.nat.accepted()[0]["traits"]
    assert (nat["meta"], nat["label"], nat["twice"]) == ('{"a":1}', "x:y", 1)


def test_now_windows_on_postgresql_are_in_utc_whatever_the_servers_time_zone(
        sqlite_env: Env, pg_source: str) -> None:
    """`:now` is a timestamptz, and syncd's session is in UTC: a `timestamp` column (no time
    zone) holds UTC, as the traits syncd sends say, even where the server's default is not."""
    env = sqlite_env
    name = pg_source.rsplit("/", 1)[1]
    now = datetime.now(UTC).replace(tzinfo=None)
    _sql(pg_source, f"ALTER DATABASE \"{name}\" SET timezone = 'Asia/Kolkata'",  # UTC+05:30
         "CREATE TABLE people (id text, email text, seen timestamp)",
         f"INSERT INTO people VALUES ('earlier', 'e@example.com', '{now - timedelta(hours=1)}'), "
         f"('later', 'l@example.com', '{now + timedelta(hours=1)}')")
    query = "SELECT id AS user_id, email FROM people WHERE seen <= :now AND seen > :now - interval '1 day'"

    report = env.run(_pg_config(env, pg_source, _pg_audience(query)))

    assert report.exit_code == 0, report.audience_errors
    assert flags(env.nat.accepted()) == {"earlier": True}


def test_an_sql_error_is_the_databases_message_on_one_line(sqlite_env: Env, pg_source: str) -> None:
    env = sqlite_env
    _sql(pg_source, "CREATE TABLE people (id text, email text)")
    audiences = (_pg_audience("SELECT id AS user_id, emial\nFROM people", "Typo")
                 + _pg_audience("SELECT id AS user_id\nFROM no_such_table", "Missing"))

    report = env.run(_pg_config(env, pg_source, audiences))

    assert report.exit_code == 1
    assert report.audience_errors == {
        "typo": "query failed on source 'pg': column \"emial\" does not exist "
                "(Perhaps you meant to reference the column \"people.email\".)",
        "missing": "query failed on source 'pg': relation \"no_such_table\" does not exist",
    }


# --- columns that would overwrite a trait or an identity ----------------------------------


@pytest.mark.parametrize("column", ["buyers", "Buyers", "custom_id", "id", "first_name", "First Name",
                                    "userId"])
def test_a_column_that_would_overwrite_a_trait_or_identity_fails_the_audience(
        sqlite_env: Env, column: str) -> None:
    env = sqlite_env
    env.shop.members("u1", "u2")
    bad = f'SELECT id AS user_id, email, \'OVERWRITE\' AS "{column}" FROM customers'
    audiences = (audience_toml("Buyers", ["nat", "usercom"], query=bad)
                 + audience_toml("Everyone", ["nat", "usercom"]))
    path = env.write_config(audiences=audiences)

    result = env.cli("run-once", "--config", str(path))

    assert result.returncode == 1
    line = next(x for x in result.stderr.splitlines() if "audience buyers" in x)
    assert f"column '{column}' would overwrite" in line
    assert "the query ran on source 'shop', but its columns cannot be sent: " in line  # not "query failed"
    assert "Traceback" not in result.stderr
    for calls in (env.nat.accepted(), env.usercom.accepted()):  # nothing of `buyers` was sent
        assert "OVERWRITE" not in json.dumps(calls)
        assert all("buyers" not in c.get("traits", c) for c in calls)
    assert flags(env.nat.accepted(), "everyone") == {"u1": True, "u2": True}
    history = json.loads(env.cli("history", "--json", "--config", str(path)).stdout)
    assert history[0]["outcome"] == "undelivered"


def test_identity_columns_are_not_extra_traits(sqlite_env: Env) -> None:
    env = sqlite_env
    env.shop.set(("u1", "u1@example.com", "2026-11-20 10:00:00", "anon-1", "https://x.example/1"))
    query = "SELECT id AS user_id, anon AS anonymous_id, email, url, plan FROM customers"

    report = env.run(env.config(audiences=audience_toml("Buyers", ["nat"], query=query)))

    assert report.exit_code == 0, report.audience_errors
    assert env.nat.accepted()[0]["traits"] == {"email": "u1@example.com", "plan": "pro", "buyers": True}


# --- a stop request cancels a slow query ----------------------------------------------------


# Slow only when the `slowness` table says so: the first run is quick, the second crawls.
SQLITE_SLOW = """
SELECT id AS user_id, email FROM customers
WHERE (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n
                               WHERE i < (SELECT steps FROM slowness))
       SELECT count(*) FROM n) > 0
"""
PG_SLOW = """
SELECT id AS user_id, email FROM people, (SELECT pg_sleep((SELECT seconds FROM slowness))) AS s
"""


def _stop_mid_snapshot(env: Env, path: Any, query_running: Any, command: str = "run-once",
                       to_a_thread: bool = False) -> subprocess.CompletedProcess[str]:
    """SIGTERM to `syncd run-once` while its query runs (`to_a_thread`: as the kernel may
    deliver it, to a thread other than the main one, here the query's); it must end well
    before the query."""
    process = env.spawn(command, config=path)
    try:
        wait_for(query_running, what="the slow query to run")
        time.sleep(0.5)
        if to_a_thread:
            signal_a_thread(process.pid, signal.SIGTERM)
        else:
            process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=15)  # the query alone would take minutes
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _assert_stopped_and_kept(env: Env, result: subprocess.CompletedProcess[str], path: Any,
                             exit_code: int = 1) -> None:
    assert result.returncode == exit_code, result.stderr
    assert "snapshot cancelled by the stop request" in result.stderr
    assert "Traceback" not in result.stderr
    state = dump_state(env.state_url)
    assert "u:u1" in state and "u:u3" not in state  # the previous snapshot is intact
    history = json.loads(env.cli("history", "--json", "--config", str(path)).stdout)
    assert history[0]["outcome"] == "interrupted"
    assert flags(env.nat.accepted()) == {"u1": True, "u2": True}  # nothing sent meanwhile


@pytest.mark.parametrize(("command", "to_a_thread"),
                         [("run-once", False), ("run", False), ("run-once", True)])
def test_sigterm_cancels_a_slow_sqlite_query(sqlite_env: Env, command: str, to_a_thread: bool) -> None:
    env = sqlite_env
    with env.shop.connect() as db:
        db.execute("CREATE TABLE slowness (steps INTEGER)")
        db.execute("INSERT INTO slowness VALUES (1)")
    env.shop.members("u1", "u2")
    path = env.write_config(audiences=audience_toml("Buyers", ["nat"], query=SQLITE_SLOW))
    assert env.cli("run-once", "--config", str(path)).returncode == 0
    env.shop.members("u2", "u3")
    with env.shop.connect() as db:
        db.execute("UPDATE slowness SET steps = 2000000000")  # minutes of counting

    result = _stop_mid_snapshot(env, path, lambda: "'running'" in dump_state(env.state_url), command,
                                to_a_thread)

    _assert_stopped_and_kept(env, result, path, exit_code=0 if command == "run" else 1)
    with env.shop.connect() as db:
        db.execute("UPDATE slowness SET steps = 1")
    assert env.cli("run-once", "--config", str(path)).returncode == 0
    assert flags(env.nat.accepted()) == {"u1": False, "u2": True, "u3": True}


def test_sigterm_cancels_a_slow_postgresql_query(sqlite_env: Env, pg_source: str) -> None:
    env = sqlite_env
    _sql(pg_source, "CREATE TABLE people (id text, email text)", "CREATE TABLE slowness (seconds int)",
         "INSERT INTO slowness VALUES (0)",
         "INSERT INTO people VALUES ('u1', 'u1@example.com'), ('u2', 'u2@example.com')")
    audiences = audience_toml("Buyers", ["nat"], query=PG_SLOW).replace('source = "shop"', 'source = "pg"')
    path = env.write_config(audiences=audiences, extra=f'\n[sources.pg]\nurl = "{pg_source}"\n')
    assert env.cli("run-once", "--config", str(path)).returncode == 0
    _sql(pg_source, "DELETE FROM people WHERE id = 'u1'",
         "INSERT INTO people VALUES ('u3', 'u3@example.com')", "UPDATE slowness SET seconds = 600")
    watcher = create_engine(pg_source)

    def sleeping() -> bool:
        with watcher.connect() as conn:
            return bool(conn.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE wait_event = "
                                         "'PgSleep' AND datname = current_database()")))

    try:
        result = _stop_mid_snapshot(env, path, sleeping)
        _assert_stopped_and_kept(env, result, path)
        wait_for(lambda: not sleeping(), timeout=10, what="the query to be cancelled at the server")
    finally:
        watcher.dispose()
    _sql(pg_source, "UPDATE slowness SET seconds = 0")
    assert env.cli("run-once", "--config", str(path)).returncode == 0
    assert flags(env.nat.accepted()) == {"u1": False, "u2": True, "u3": True}


def _slow_statement(url: str, seconds: int) -> str:
    if url.startswith("postgresql"):
        return f"SELECT pg_sleep({seconds})"
    return (f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n "
            f"WHERE i < {seconds * 5_000_000}) SELECT count(*) FROM n")


def test_a_stop_cancels_this_threads_statements_only(state_url: str) -> None:
    """The snapshot's merge into the state database is cancelled too; the lease keeper's
    connection, taken by another thread, is not."""
    engine = create_engine(state_url)
    stop, other_done = threading.Event(), threading.Event()

    def other_thread() -> None:
        with engine.connect() as conn:
            conn.execute(text(_slow_statement(state_url, 2)))
        other_done.set()

    try:
        with engine.connect() as conn:  # a connection taken before the block is not cancelled
            other = threading.Thread(target=other_thread)
            with cancelled_on(stop, engine):
                other.start()
                time.sleep(0.3)
                threading.Timer(0.5, stop.set).start()
                with pytest.raises(OperationalError), engine.connect() as mine:
                    mine.execute(text(_slow_statement(state_url, 60)))
            other.join()
            assert other_done.is_set()
            assert conn.scalar(text("SELECT 1")) == 1
    finally:
        engine.dispose()
