"""First sync at User.com of N members, most of whom User.com already has (issue 17).

    .venv/bin/python bench/first_sync.py                                  # 10,000 members, 90% exist
    .venv/bin/python bench/first_sync.py --members 100000 --existing 0.9
    .venv/bin/python bench/first_sync.py --members 20000 --others 20000 --id-field user_id

User.com's stand-in runs in its own process (bench/_standins.py). Before syncd ever runs,
it is seeded with `--existing` of the members (a seeded random sample; same custom ids,
with emails: the CRM's users) and `--others` users that are not in the audience. Then the
real `syncd run-once` (a subprocess; SQLite source and state) sends one audience to User.com
unpaced (rate_limit 1000, the highest the config takes), and a second run must send
nothing. Calls are the stand-in's counters per endpoint (listing, mass updates,
update_or_create, attributes), so the same script measures any way syncd finds to send
them; changes are the members. The modelled time is calls ÷ 10/s, User.com's default rate
limit: with pacing the bottleneck, that is how long the same calls take for real. The
last line models `--model` members by scaling the calls per member (linear: right for one
call per member; for a listing, which grows with User.com's size, a first estimate).
The stand-in must end holding every member's attribute `true`, or the bench fails.
"existing/bulk call" is the existing members' changes per call of the listing and the mass
updates that carry them (the members User.com lacks are created one call each).
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table
from _standins import ENV, StandInProcess

from syncd.render import duration

KEY = "bench_first_sync"
UNPACED = 1000  # the highest rate_limit the config accepts
DEFAULT_RATE = 10.0  # User.com's default rate limit, requests per second


def write_source(path: Path, members: int) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE members (id TEXT, email TEXT)")
        db.executemany("INSERT INTO members VALUES (?, ?)",
                       ((f"m{i}", f"m{i}@example.com") for i in range(members)))


def write_config(tmp: Path, base_url: str) -> Path:
    path = tmp / "config.toml"
    path.write_text(textwrap.dedent(f"""
        [state]
        url = "sqlite:///{tmp / 'state.db'}"
        [sources.shop]
        url = "sqlite:///{tmp / 'source.db'}"
        [destinations.usercom]
        type = "usercom"
        base_url = "{base_url}"
        api_key_env = "USERCOM_API_KEY"
        rate_limit = {UNPACED}
        [[audiences]]
        name = "{KEY}"
        key = "{KEY}"
        source = "shop"
        destinations = ["usercom"]
        query = "SELECT id AS user_id, email FROM members"
        """))
    return path


def run_once(config: Path) -> float:
    """`syncd run-once`; its wall time. Anything but exit 0 stops the bench."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "syncd", "run-once", "--config", str(config)],
                          env={**os.environ, **ENV}, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-3000:])
        raise SystemExit(f"syncd run-once exited {done.returncode}")
    return time.monotonic() - started


def seed(stand_ins: StandInProcess, members: int, existing: float, others: int, rng: random.Random) -> int:
    chosen = sorted(rng.sample(range(members), round(members * existing)))
    # The CRM's users in an order unrelated to the audience's: members and others interleaved.
    users = [f"m{i}" for i in chosen] + [f"other{i}" for i in range(others)]
    rng.shuffle(users)
    stand_ins.seed_usercom(users)
    return len(chosen)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="syncd-first-sync-") as tmp_name, \
            StandInProcess(id_field=args.id_field) as stand_ins:
        tmp = Path(tmp_name)
        write_source(tmp / "source.db", args.members)
        existing = seed(stand_ins, args.members, args.existing, args.others, random.Random(args.seed))
        config = write_config(tmp, stand_ins.urls["usercom"])
        seconds = run_once(config)
        first = stand_ins.counters("usercom")
        run_once(config)
        second = stand_ins.counters("usercom")
        holding = stand_ins.holding(KEY)
    if holding["true"] != args.members or holding["false"] != 0:
        raise SystemExit(f"User.com holds {holding} for {KEY}, not {args.members} members true")
    calls = first["requests"]
    return {"members": args.members, "existing": existing, "others": args.others, "calls": calls,
            "by_endpoint": first["calls"], "429s": first["429s"],
            "second_run_calls": second["requests"] - calls, "wall_s": seconds,
            "users_at_end": holding["users"]}


def _per_bulk_call(result: dict[str, Any]) -> str:
    bulk = result["by_endpoint"].get("listing", 0) + result["by_endpoint"].get("mass_update", 0)
    return f"{result['existing'] / bulk:.1f}" if bulk else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--existing", type=float, default=0.9, help="share of members User.com has")
    parser.add_argument("--others", type=int, default=0, help="User.com users not in the audience")
    parser.add_argument("--id-field", choices=("custom_id", "user_id"), default="custom_id",
                        help="what User.com's listing names the custom id")
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE, help="the modelled rate limit")
    parser.add_argument("--model", type=int, default=1_000_000, help="members to model from the run")
    parser.add_argument("--seed", type=int, default=17)
    args = parser.parse_args()
    result = measure(args)
    calls, members = result["calls"], result["members"]
    row = {"members": f"{members:,}", "existing": f"{result['existing']:,}",
           "User.com users before": f"{result['existing'] + result['others']:,}",
           **{name: f"{count:,}" for name, count in result["by_endpoint"].items() if count},
           "calls": f"{calls:,}", "changes/call": f"{members / calls:.2f}",
           # The existing members' changes per call of the bulk paths that carry them.
           "existing/bulk call": _per_bulk_call(result),
           f"at {args.rate:g}/s": duration(round(calls / args.rate)),
           "wall (unpaced)": f"{result['wall_s']:.1f} s", "429s": result["429s"],
           "2nd run calls": result["second_run_calls"]}
    print(table([row], list(row)))
    modelled = calls / members * args.model
    print(f"modelled at {args.model:,} members: {modelled:,.0f} calls, "
          f"{duration(round(modelled / args.rate))} at {args.rate:g}/s")


if __name__ == "__main__":
    main()
