"""Calls per change and changes per second against the stand-ins, at a fixed rate_limit (issue 12).

    .venv/bin/python bench/calls.py                      # small: 1,000 users, 20,000 members, 100/s
    .venv/bin/python bench/calls.py --users 20000 --members 1000000 \\
        --rate-nat 20 --rate-usercom 10                  # the issue's sizes and rates (hours today)

The whole pipeline runs (`sync.run_once`: snapshot, plan, identify, delivery) in this
process with a SQLite source and a fresh state per scenario; the Nat and User.com
stand-ins run in a separate process (as in `delivery.py`) and enforce the same rate as
the destination's `rate_limit` (429 + `Retry-After: 1` beyond it; the 429s are shown).
Calls are counted by the stand-ins (every HTTP request they receive, per route), not by
syncd; changes are what the bench's own data implies (checked against the run's diff).

(a) initial send: `--users` users, each in a random non-empty subset (seeded) of 5
    audiences; one run to Nat alone, one to User.com alone, paced at their rates.
(b) increment at User.com, users known: one audience of `--members`; an unpaced full send
    (rate_limit 1000) and an unpaced run where half of the churn leaves, then the
    measured, paced run: those come back and as many others leave (`--churn` of the
    members in all, entries and exits, every user already known to User.com).

Wall time is the whole `run_once` (snapshot and diff included). Ratio = changes per
second / rate_limit: 1.0 means one call per change with pacing the bottleneck. The ratio
does not depend on the rate as long as pacing is the bottleneck (the stand-in answers
~700 calls/s on 2 cores), so measuring at 100/s with the counts scaled down in
proportion is legitimate: at 10/s and one call per change, 10,000 changes take ~17 min;
wall times scale with 1/rate. Once a run makes far fewer calls than it has changes,
its fixed costs (snapshot and diff: ~1 s per 100,000 members on this VM, see
snapshot_diff.py) are no longer small next to the pacing, and the ratio then depends on
the size: measure (b) at the real rate (`--rate-usercom 10`) to compare with a goal.
(b)'s unpaced setup sends every member one by one (~700 users/s at best).
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fresh_state, table
from _standins import ENV, StandInProcess

from syncd.config import load_config
from syncd.run.pipeline import Options, open_state, run_once
from syncd.run.report import RunReport

AUDIENCES = 5
UNPACED = 1000.0  # the highest rate_limit the config accepts


# -- data and config -----------------------------------------------------------------------

def write_source(path: Path, users: int, members: int, seed: int) -> None:
    """`people`: each user in a random non-empty subset of a0..a4. `members`: flag `inside`."""
    rng = random.Random(seed)
    with sqlite3.connect(path) as db:
        columns = ", ".join(f"a{i} INTEGER" for i in range(AUDIENCES))
        db.execute(f"CREATE TABLE people (id TEXT, email TEXT, {columns})")
        rows = ((f"p{i}", f"p{i}@example.com", *_subset(rng.randint(1, 2**AUDIENCES - 1)))
                for i in range(users))
        db.executemany(f"INSERT INTO people VALUES (?, ?{', ?' * AUDIENCES})", rows)
        db.execute("CREATE TABLE members (id TEXT, email TEXT, inside INTEGER)")
        db.executemany("INSERT INTO members VALUES (?, ?, 1)",
                       ((f"m{i}", f"m{i}@example.com") for i in range(members)))


def _subset(mask: int) -> list[int]:
    return [(mask >> i) & 1 for i in range(AUDIENCES)]


def set_inside(path: Path, ids: list[int], inside: bool) -> None:
    with sqlite3.connect(path) as db:
        db.executemany("UPDATE members SET inside = ? WHERE id = ?", ((int(inside), f"m{i}") for i in ids))


@dataclass(frozen=True)
class Setup:
    tmp: Path
    state_url: str
    urls: dict[str, str]


def write_config(setup: Setup, destination: str, rate: float, audiences: str) -> Path:
    target = (f'type = "nat"\nendpoint = "{setup.urls["nat"]}"\napi_key_env = "NAT_API_KEY"'
              if destination == "nat" else
              f'type = "usercom"\nbase_url = "{setup.urls["usercom"]}"\napi_key_env = "USERCOM_API_KEY"')
    path = setup.tmp / f"{destination}-{rate:g}.toml"
    path.write_text(textwrap.dedent(f"""
        [state]
        url = "{setup.state_url}"
        [sources.shop]
        url = "sqlite:///{setup.tmp / 'source.db'}"
        [destinations.{destination}]
        """) + target + f"\nrate_limit = {rate}\n" + audiences)
    return path


def audience(key: str, destination: str, query: str) -> str:
    return (f'\n[[audiences]]\nname = "{key}"\nkey = "{key}"\nsource = "shop"\n'
            f'destinations = ["{destination}"]\nquery = "{query}"\n')


def overlapping(destination: str) -> str:
    query = "SELECT id AS user_id, email FROM people WHERE a{} = 1"
    return "".join(audience(f"bench_a{i}", destination, query.format(i)) for i in range(AUDIENCES))


# -- measuring -----------------------------------------------------------------------------

def run(config_path: Path) -> tuple[RunReport, float]:
    config = load_config(config_path, ENV)
    engine = open_state(config)
    try:
        started = time.monotonic()
        report = run_once(config, Options(), engine=engine)
        return report, time.monotonic() - started
    finally:
        engine.dispose()


def measure(stand_ins: StandInProcess, scenario: str, destination: str, rate: float, config: Path,
            changes: int) -> dict[str, Any]:
    before = stand_ins.counters(destination)
    report, seconds = run(config)
    after = stand_ins.counters(destination)
    diffed = sum(p.entered + p.left for p in report.pairs)
    if report.outcome != "ok" or diffed != changes:
        raise SystemExit(f"{scenario} {destination}: outcome {report.outcome}, {diffed} changes in the "
                         f"run's diff, {changes} expected")
    calls = after["requests"] - before["requests"]
    routes = {r: n - before["routes"].get(r, 0) for r, n in after["routes"].items()
              if n != before["routes"].get(r, 0)}
    return {"scenario": scenario, "destination": destination, "changes": changes, "calls": calls,
            "calls/change": f"{calls / changes:.3f}", "wall_s": f"{seconds:.1f}",
            "changes/s": f"{changes / seconds:.1f}", "rate_limit": f"{rate:g}",
            "ratio": f"{changes / seconds / rate:.2f}", "429s": after["429s"] - before["429s"],
            "_routes": routes}


def initial_send(stand_ins: StandInProcess, setup: Setup, destination: str, rate: float,
                 changes: int) -> dict[str, Any]:
    stand_ins.rate(**{name: rate if name == destination else None for name in ("nat", "usercom")})
    time.sleep(1.0)  # the stand-in's bucket starts full, as a real API's would be at rest
    config = write_config(setup, destination, rate, overlapping(destination))
    return measure(stand_ins, "(a) initial, 5 audiences", destination, rate, config, changes)


def increment(stand_ins: StandInProcess, setup: Setup, members: int, churn: float, rate: float,
              seed: int) -> dict[str, Any]:
    query = "SELECT id AS user_id, email FROM members WHERE inside = 1"
    moved = random.Random(seed + 1).sample(range(members), max(2, int(members * churn)))
    back, leaving = moved[: len(moved) // 2], moved[len(moved) // 2:]
    source = setup.tmp / "source.db"
    unpaced = write_config(setup, "usercom", UNPACED, audience("bench_members", "usercom", query))
    stand_ins.rate(nat=None, usercom=None)
    for step in ("full send", "first leavers"):
        if step == "first leavers":
            set_inside(source, back, inside=False)
        started = time.monotonic()
        report, _ = run(unpaced)
        print(f"(b) setup, {step}: {report.outcome} in {time.monotonic() - started:.1f} s", flush=True)
    set_inside(source, back, inside=True)
    set_inside(source, leaving, inside=False)
    stand_ins.rate(nat=None, usercom=rate)
    time.sleep(1.0)
    paced = write_config(setup, "usercom", rate, audience("bench_members", "usercom", query))
    scenario = f"(b) {len(moved) / members:.0%} of {members:,}, known"
    return measure(stand_ins, scenario, "usercom", rate, paced, len(moved))


def forget_sqlite_state(tmp: Path) -> None:
    """`fresh_state` names the same SQLite file every time: the next scenario starts empty."""
    for path in tmp.glob("state.db*"):
        path.unlink()


def memberships(path: Path) -> int:
    with sqlite3.connect(path) as db:
        total: int = db.execute(f"SELECT {' + '.join(f'sum(a{i})' for i in range(AUDIENCES))} FROM people"
                                ).fetchone()[0] or 0
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=1_000, help="(a): users over 5 audiences")
    parser.add_argument("--members", type=int, default=20_000, help="(b): members of the audience")
    parser.add_argument("--churn", type=float, default=0.01, help="(b): share of members that change")
    parser.add_argument("--rate-nat", type=float, default=100.0)
    parser.add_argument("--rate-usercom", type=float, default=100.0)
    parser.add_argument("--scenario", choices=("a", "b", "both"), default="both")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--state", default="sqlite", help="'sqlite' or a PostgreSQL server URL")
    args = parser.parse_args()
    rows = []
    stand_ins = StandInProcess()
    try:
        with tempfile.TemporaryDirectory(prefix="syncd-calls-") as tmp_name:
            tmp = Path(tmp_name)
            users = args.users if args.scenario != "b" else 0
            write_source(tmp / "source.db", users, args.members if args.scenario != "a" else 0, args.seed)
            changes = memberships(tmp / "source.db")
            rates = {"nat": args.rate_nat, "usercom": args.rate_usercom}
            for destination in ("nat", "usercom") if args.scenario != "b" else ():
                with fresh_state(args.state, tmp_name) as url:
                    setup = Setup(tmp, url, stand_ins.urls)
                    rows.append(initial_send(stand_ins, setup, destination, rates[destination], changes))
                    print(table(rows[-1:], _shown(rows[-1])), flush=True)
                forget_sqlite_state(tmp)
            if args.scenario != "a":
                with fresh_state(args.state, tmp_name) as url:
                    setup = Setup(tmp, url, stand_ins.urls)
                    rows.append(increment(stand_ins, setup, args.members, args.churn, args.rate_usercom,
                                          args.seed))
    finally:
        stand_ins.close()
    sizes = {"a": f"(a) {args.users:,} users, {changes:,} memberships",
             "b": f"(b) {args.members:,} members, churn {args.churn:g}"}
    shown = [v for k, v in sizes.items() if args.scenario in (k, "both")]
    print(f"\n{'; '.join(shown)}; seed {args.seed}; state {args.state}")
    print(table(rows, _shown(rows[0])))
    for row in rows:
        print(f"{row['scenario']} {row['destination']}: " +
              ", ".join(f"{route} {count}" for route, count in sorted(row["_routes"].items())))


def _shown(row: dict[str, Any]) -> list[str]:
    return [c for c in row if not c.startswith("_")]


if __name__ == "__main__":
    main()
