"""`syncd check [--connect] [--json]`: the config offline; with --connect, real SQLite and
PostgreSQL sources and the Nat and User.com stand-ins. Nothing is ever sent."""

from __future__ import annotations

import json
import sqlite3
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from syncd.dev.standins import NatStandIn, UserComStandIn

from conftest import POSTGRES_URL, _fresh_postgres_database, free_port, run_cli

GOOD = "SELECT id AS user_id, email, plan FROM customers WHERE last_order_at <= :now"
AUDIENCES = {
    "good": GOOD + " -- a comment at the end",
    "bad_sql": "SELEKT id FROM customers",
    "no_id": "SELECT email, plan FROM customers",
    "reserved": "SELECT id AS user_id, plan AS first_name FROM customers",
    "own_key": "SELECT id AS user_id, plan AS own_key FROM customers",
}


@pytest.fixture(params=["sqlite", "postgresql"])
def source_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A real source database of each kind with a `customers` table (one row)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'shop.db'}"
        sqlite3.connect(tmp_path / "shop.db").close()
        yield from _with_customers(url)
        return
    if not POSTGRES_URL:
        pytest.skip("PostgreSQL source tests need SYNCD_TEST_POSTGRES_URL")
    for url in _fresh_postgres_database(POSTGRES_URL):
        yield from _with_customers(url)


def _with_customers(url: str) -> Iterator[str]:
    engine = create_engine(url)
    # PostgreSQL binds `:now` as timestamptz: the column must be a timestamp there to compare.
    stamp = "TIMESTAMPTZ" if url.startswith("postgresql") else "TEXT"
    with engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE customers (id TEXT, email TEXT, plan TEXT, last_order_at {stamp})"))
        conn.execute(text("INSERT INTO customers VALUES ('u1', 'u1@example.com', 'pro', '2026-01-01')"))
    engine.dispose()
    yield url


def write_config(tmp_path: Path, source_url: str, nat_endpoint: str, usercom_base: str,
                 audiences: dict[str, str]) -> Path:
    body = textwrap.dedent(f"""
        [state]
        url = "sqlite:///{tmp_path / 'state.db'}"

        [sources.shop]
        url = "{source_url}"

        [destinations.nat]
        type = "nat"
        endpoint = "{nat_endpoint}"
        api_key_env = "NAT_API_KEY"
        timeout = "2s"

        [destinations.usercom]
        type = "usercom"
        base_url = "{usercom_base}"
        api_key_env = "USERCOM_API_KEY"
        timeout = "2s"
    """)
    for key, query in audiences.items():
        body += (f'\n[[audiences]]\nname = "{key}"\nsource = "shop"\n'
                 f'destinations = ["nat", "usercom"]\nquery = """\n{query}\n"""\n')
    path = tmp_path / "config.toml"
    path.write_text(body)
    return path


def _nothing_sent(nat: NatStandIn, usercom: UserComStandIn) -> None:
    assert nat.accepted() == [] and usercom.users() == {} and usercom.attributes() == []


def _by_name(checks: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["audience"] or c["destination"] or c["source"] or c["check"]: c for c in checks}


def test_offline_check_needs_no_database_or_network(tmp_path: Path) -> None:
    path = write_config(tmp_path, f"sqlite:///{tmp_path / 'absent.db'}", "https://nat.invalid/segment",
                        "https://app.user.invalid/api/public/", {"good": GOOD})
    result = run_cli("check", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "config OK: 1 audience, 2 destinations"
    assert not (tmp_path / "state.db").exists()
    as_json = json.loads(run_cli("check", "--json", "--config", str(path), cwd=tmp_path).stdout)
    assert as_json == [{"check": "config", "source": None, "audience": None, "destination": None,
                        "ok": True, "message": "config OK: 1 audience, 2 destinations"}]


def test_offline_check_exits_2_on_a_config_error(tmp_path: Path) -> None:
    path = write_config(tmp_path, "sqlite:///shop.db", "ftp://nat.example/", "https://u.example/",
                        {"good": GOOD})
    result = run_cli("check", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert "destinations.nat.endpoint" in result.stderr and "Traceback" not in result.stderr


def test_connect_checks_every_query_and_destination(tmp_path: Path, source_url: str, nat: NatStandIn,
                                                    usercom: UserComStandIn) -> None:
    path = write_config(tmp_path, source_url, nat.endpoint, usercom.base_url, AUDIENCES)
    result = run_cli("check", "--connect", "--json", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    checks = _by_name(json.loads(result.stdout))
    assert set(checks) == {"config", "shop", "good", "bad_sql", "no_id", "reserved", "own_key",
                           "nat", "usercom"}
    assert set(checks["good"]) == {"check", "source", "audience", "destination", "ok", "message"}
    assert checks["shop"]["ok"] and checks["good"]["ok"]
    assert checks["good"]["message"] == "query OK; columns: user_id, email, plan"
    assert not checks["bad_sql"]["ok"] and "syntax error" in checks["bad_sql"]["message"]
    assert not checks["no_id"]["ok"] and "no user_id or anonymous_id" in checks["no_id"]["message"]
    assert not checks["reserved"]["ok"] and "'first_name'" in checks["reserved"]["message"]
    assert not checks["own_key"]["ok"] and "audience key" in checks["own_key"]["message"]
    assert checks["nat"]["ok"] and "Nat has no read-only call" in checks["nat"]["message"]
    assert checks["usercom"]["ok"] and "key is accepted" in checks["usercom"]["message"]
    _nothing_sent(nat, usercom)

    human = run_cli("check", "--connect", "--config", str(path), cwd=tmp_path)
    assert human.returncode == 1
    assert "audience bad_sql: FAILED: query failed" in human.stdout
    assert human.stdout.strip().endswith(
        "4 checks failed: audience bad_sql, audience no_id, audience reserved, audience own_key")


def test_connect_all_good_exits_0(tmp_path: Path, source_url: str, nat: NatStandIn,
                                  usercom: UserComStandIn) -> None:
    path = write_config(tmp_path, source_url, nat.endpoint, usercom.base_url, {"good": GOOD})
    result = run_cli("check", "--connect", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "audience good: ok: query OK" in result.stdout
    _nothing_sent(nat, usercom)


def test_connect_names_a_refused_key_and_a_closed_port(tmp_path: Path, nat: NatStandIn,
                                                       usercom: UserComStandIn) -> None:
    sqlite_url = f"sqlite:///{tmp_path / 'shop.db'}"
    list(_with_customers(sqlite_url))
    closed = f"http://127.0.0.1:{free_port()}/segment"
    path = write_config(tmp_path, sqlite_url, closed, usercom.base_url, {"good": GOOD})
    result = run_cli("check", "--connect", "--json", "--config", str(path), cwd=tmp_path,
                     env={"USERCOM_API_KEY": "wrong-key"})
    assert result.returncode == 1
    checks = _by_name(json.loads(result.stdout))
    assert not checks["nat"]["ok"] and "ConnectError" in checks["nat"]["message"]
    assert not checks["usercom"]["ok"]
    # The status once, with User.com's own words.
    assert checks["usercom"]["message"] == "User.com refused the API key (HTTP 403 Forbidden: Invalid token.)"
    assert "wrong-key" not in result.stdout
    _nothing_sent(nat, usercom)


def test_connect_takes_a_query_ending_in_a_semicolon_and_comments_and_names_column_problems(
        tmp_path: Path, source_url: str, nat: NatStandIn, usercom: UserComStandIn) -> None:
    """A query as people end it (`;`, then a comment) checks as it runs; columns that cannot be
    sent are named as such, not as a failed query."""
    audiences = {"ended": GOOD + ";  /* done */ -- buyers, as of :now\n",
                 "no_id": AUDIENCES["no_id"] + "; -- no id column"}
    path = write_config(tmp_path, source_url, nat.endpoint, usercom.base_url, audiences)
    checks = _by_name(json.loads(run_cli("check", "--connect", "--json", "--config", str(path),
                                         cwd=tmp_path).stdout))
    assert checks["ended"]["ok"] and checks["ended"]["message"] == "query OK; columns: user_id, email, plan"
    assert checks["no_id"]["message"] == ("the query runs, but its columns cannot be sent: the query returns "
                                          "no user_id or anonymous_id column (it returns: email, plan)")
    _nothing_sent(nat, usercom)


def test_connect_names_a_name_that_does_not_resolve_and_a_failed_tls_handshake(
        tmp_path: Path, nat: NatStandIn, usercom: UserComStandIn) -> None:
    """DNS: a name under .invalid never resolves. TLS: https to the User.com stand-in's plain-HTTP
    port fails the handshake. Each destination is named with what to look at; the other
    checks go on."""
    sqlite_url = f"sqlite:///{tmp_path / 'shop.db'}"
    list(_with_customers(sqlite_url))
    tls = usercom.base_url.replace("http://", "https://")
    path = write_config(tmp_path, sqlite_url, "http://nat.syncd-check.invalid/segment", tls, {"good": GOOD})
    result = run_cli("check", "--connect", "--json", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    checks = _by_name(json.loads(result.stdout))
    assert checks["good"]["ok"] and not checks["nat"]["ok"] and not checks["usercom"]["ok"]
    assert checks["nat"]["message"].startswith("cannot reach http://nat.syncd-check.invalid/segment: "
                                               "DNS: nat.syncd-check.invalid does not resolve (")
    assert checks["usercom"]["message"].startswith(f"cannot reach {tls}attributes/: TLS handshake failed (")
    human = run_cli("check", "--connect", "--config", str(path), cwd=tmp_path)
    assert human.returncode == 1 and "2 checks failed: destination nat, destination usercom" in human.stdout
    _nothing_sent(nat, usercom)


def test_connect_names_a_missing_source(tmp_path: Path, nat: NatStandIn, usercom: UserComStandIn) -> None:
    path = write_config(tmp_path, f"sqlite:///{tmp_path / 'absent.db'}", nat.endpoint, usercom.base_url,
                        {"good": GOOD})
    result = run_cli("check", "--connect", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 1
    assert "source shop: FAILED: source database file" in result.stdout
    assert "audience good: FAILED: not checked: source 'shop' failed" in result.stdout
    assert not (tmp_path / "absent.db").exists()
