"""`make demo`: the real pipeline, end to end, with no accounts.

Seeds a sample shop database, starts the local stand-ins of Nat, User.com and Segment's HTTP
API that ship with syncd (User.com already holding most of the customers, as a team's CRM does),
runs `syncd run-once` (the real command) for the full initial send, changes the shop
data, runs it again for the increment, and shows what each destination received and
holds.
"""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url

from syncd.config import Config, load_config
from syncd.dev.standins import (
    DEFAULT_KEYS,
    KEY_ENV,
    NatStandIn,
    PortTaken,
    SegmentStandIn,
    StandIn,
    UserComStandIn,
    listen,
)
from syncd.errors import ConfigError
from syncd.render import plural

DEMO_KEYS = {KEY_ENV[name]: DEFAULT_KEYS[name] for name in ("nat", "usercom", "segment")}
STAND_INS = ("nat", "usercom", "cdp")  # the destinations the demo's stand-ins are
S = TypeVar("S", bound=StandIn)


def main() -> int:
    config_path = Path(os.environ.get("SYNCD_CONFIG", "config.toml"))
    env = {**os.environ, **{k: os.environ.get(k) or v for k, v in DEMO_KEYS.items()}}
    try:
        config = load_config(config_path, env)
    except ConfigError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    urls = {name: config.destinations[name].url for name in STAND_INS if name in config.destinations}
    if set(urls) != set(STAND_INS) or any(urlsplit(url).hostname != "127.0.0.1" for url in urls.values()):
        print(f"demo: {config_path} no longer points at the local stand-ins; the demo only "
              "runs against them (it resets the state database)", file=sys.stderr)
        return 2
    shop = _sqlite_path(config.sources["shop"].url)
    try:  # the ports first: a taken one stops the demo before it touches the existing state
        nat, usercom, segment = _stand_ins(env, urls)
    except PortTaken as exc:
        print(f"demo: {exc}; stop what listens there or change the port in {config_path}", file=sys.stderr)
        return 1
    _reset(config, shop)
    with nat, usercom, segment:
        _seed_crm(usercom)
        print("== 1. initial full send ==", flush=True)
        first = _run_once(config_path, env)
        _show(nat, usercom)
        _show_segment(segment)
        print("\n== 2. shop data changed: 3 new orders, 2 customers' last order now 40 days old ==",
              flush=True)
        _change_shop(shop)
        before = [len(server.accepted()) for server in (nat, usercom, segment)]
        second = _run_once(config_path, env)
        _show_increment(nat, usercom, segment, before)
        print("\n== 3. nothing changed: a no-op run ==", flush=True)
        before = [server.requests for server in (nat, usercom, segment)]
        third = _run_once(config_path, env)
        done = sum(server.requests for server in (nat, usercom, segment)) - sum(before)
        print(f"   requests in this run: {done}")
        print("\n== syncd status ==", flush=True)
        subprocess.run([sys.executable, "-m", "syncd", "status", "--config", str(config_path)],
                       env=env, check=False)
    ok = first == second == third == 0
    print("\ndemo " + ("finished: every change delivered" if ok else "FAILED: see the log above"))
    return 0 if ok else 1


def _stand_ins(env: dict[str, str],
               urls: dict[str, str]) -> tuple[NatStandIn, UserComStandIn, SegmentStandIn]:
    """The stand-ins, their ports bound (PortTaken if one is not free; none left open then)."""
    started: list[StandIn] = []

    def bound(kind: type[S], key_env: str, url: str) -> S:
        started.append(server := listen(kind, env[key_env], urlsplit(url).port or 0))
        return server

    try:
        return (bound(NatStandIn, "NAT_API_KEY", urls["nat"]),
                bound(UserComStandIn, "USERCOM_API_KEY", urls["usercom"]),
                bound(SegmentStandIn, "SEGMENT_WRITE_KEY", urls["cdp"]))
    except PortTaken:
        for server in started:
            server.stop()
        raise


def _run_once(config_path: Path, env: dict[str, str]) -> int:
    command = [sys.executable, "-m", "syncd", "run-once", "--config", str(config_path)]
    print("$ syncd run-once --config", config_path, flush=True)
    code = subprocess.run(command, env=env, check=False).returncode
    print(f"   exit status {code}")
    return code


def _sqlite_path(url: str) -> Path:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        raise SystemExit(f"demo: the shop source must be a SQLite file, not {url}")
    return Path(parsed.database)


def _reset(config: Config, shop: Path) -> None:
    state = make_url(config.state_url)
    if state.get_backend_name() == "sqlite" and state.database:
        for suffix in ("", "-wal", "-shm"):
            Path(state.database + suffix).unlink(missing_ok=True)
    shop.parent.mkdir(parents=True, exist_ok=True)
    shop.unlink(missing_ok=True)
    rng = random.Random(7)
    now = datetime.now(UTC)
    with sqlite3.connect(shop) as db:
        db.execute("CREATE TABLE customers (id TEXT PRIMARY KEY, email TEXT, plan TEXT, region TEXT, "
                   "lifetime_value REAL, last_order_at TEXT)")
        for n in range(1, 41):
            email = None if n % 13 == 0 else f"customer{n}@example.com"
            days = rng.choice([2, 5, 12, 20, 28, 45, 60, 90])
            db.execute("INSERT INTO customers VALUES (?, ?, ?, ?, ?, ?)", (
                f"u_{n:03d}", email, rng.choice(["free", "pro", "team"]),
                rng.choice(["EU", "US", "APAC"]), rng.choice([50, 120, 480, 750, 1200]),
                _sql_time(now - timedelta(days=days, hours=rng.randint(0, 23))),
            ))
    print(f"seeded {shop} with 40 customers; state reset")


def _seed_crm(usercom: UserComStandIn) -> None:
    """Most customers exist in User.com before syncd ever runs (created by its own tracking)."""
    existing = [f"u_{n:03d}" for n in range(1, 41) if n % 4]
    usercom.seed_users(existing)
    print(f"User.com already holds {len(existing)} of them (its CRM, before syncd ever ran)")


def _change_shop(shop: Path) -> None:
    now = datetime.now(UTC)
    with sqlite3.connect(shop) as db:
        recent = f"last_order_at >= '{_sql_time(now - timedelta(days=30))}'"
        old = [r[0] for r in db.execute(f"SELECT id FROM customers WHERE NOT ({recent}) "
                                        "AND email IS NOT NULL ORDER BY id LIMIT 3")]
        gone = [r[0] for r in db.execute(f"SELECT id FROM customers WHERE {recent} ORDER BY id LIMIT 2")]
        for cid in old:
            db.execute("UPDATE customers SET last_order_at = ? WHERE id = ?", (_sql_time(now), cid))
        for cid in gone:
            db.execute("UPDATE customers SET last_order_at = ? WHERE id = ?",
                       (_sql_time(now - timedelta(days=40)), cid))
    print(f"   entered: {', '.join(old)}; left: {', '.join(gone)}")


def _sql_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _show(nat: NatStandIn, usercom: UserComStandIn) -> None:
    nat_calls = nat.accepted()
    print(f"   Nat accepted {len(nat_calls)} Identify calls; it now holds {len(nat.contacts())} contacts")
    if nat_calls:
        sample = nat_calls[0]
        print(f"     e.g. {sample['traits']}  (messageId {sample['messageId']})")
    calls = usercom.calls()
    sent = calls["listing"] + calls["mass_update"] + calls["update_or_create"]
    print(f"   User.com got {sent + calls['attributes']} requests: syncd's {sent} calls (the run "
          f"summary's: {plural(calls['listing'], 'page')} listing the users it already had, "
          f"{plural(calls['mass_update'], 'mass update')} for them, {calls['update_or_create']} "
          f"update_or_create for new users and members whose extra columns need a call of their own) "
          f"and {calls['attributes']} to list and create the boolean attributes; it now holds "
          f"{len(usercom.users())} users")
    for attribute in usercom.attributes():
        print(f"     attribute {attribute['name_std']} ({attribute['value_type']})")


def _show_segment(segment: SegmentStandIn) -> None:
    events = segment.accepted()
    kinds = {kind: sum(e["type"] == kind for e in events) for kind in ("identify", "track")}
    print(f"   Segment's API accepted {len(events)} events in {plural(len(segment.sizes), 'call')}: "
          f"{kinds['identify']} Identify (one per user) and {kinds['track']} Track "
          "(Audience Entered, one per audience a user entered)")


def _show_increment(nat: NatStandIn, usercom: UserComStandIn, segment: SegmentStandIn,
                    before: list[int]) -> None:
    news = (("Nat", nat.accepted()[before[0]:], "calls"),
            ("User.com", usercom.accepted()[before[1]:], "calls"),
            ("Segment's API", segment.accepted()[before[2]:], "events"))
    for label, calls, unit in news:
        print(f"   {label} received {len(calls)} {unit} in this run:")
        for call in calls:
            if call.get("type") == "track":
                print(f"     {call['userId']}: {call['event']} {call['properties']['audience_key']}")
                continue
            if "ids" in call:  # a mass update: users User.com already knows, by their ids there
                print(f"     mass update of {len(call['ids'])} users (User.com ids {call['ids']}): "
                      f"{ {call['attribute']: call['value']} }")
                continue
            traits = call.get("traits", call)
            who = call.get("userId") or call.get("custom_id")
            flags = {k: v for k, v in traits.items() if isinstance(v, bool)}
            print(f"     {who}: {flags}")


if __name__ == "__main__":
    sys.exit(main())
