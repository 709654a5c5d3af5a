"""A paced initial send: `rate_limit = 50` against a Nat stand-in that enforces 50 req/s.

    .venv/bin/python bench/paced.py                     # 2,500 members (about 50 s)
    .venv/bin/python bench/paced.py --members 5000      # the issue's figure (about 100 s)

The whole pipeline runs (`run/pipeline.py: run_once`: snapshot, plan, identify, delivery) with a
SQLite source and state in a temporary directory. The stand-in answers 429 with
`Retry-After: 1` whenever its token bucket (rate per second, burst of one second) is
empty. Reported: calls accepted, the achieved rate between the first and the last
accepted call, its share of the allowed rate, and the 429s received.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table

from syncd.config import load_config
from syncd.dev.standins import NatStandIn
from syncd.run.pipeline import Options, open_state, run_once

KEY = "bench-nat-key"


def write_source(path: Path, members: int) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE customers (id TEXT, email TEXT)")
        db.executemany("INSERT INTO customers VALUES (?, ?)",
                       ((f"c{i}", f"c{i}@example.com") for i in range(members)))


def write_config(tmp: Path, endpoint: str, rate: float | None, concurrency: int | None) -> Path:
    rate_line = f"rate_limit = {rate}\n" if rate else ""
    concurrency_line = f"concurrency = {concurrency}\n" if concurrency else ""
    path = tmp / "config.toml"
    path.write_text(textwrap.dedent(f"""
        [state]
        url = "sqlite:///{tmp / 'state.db'}"
        [sources.shop]
        url = "sqlite:///{tmp / 'shop.db'}"
        [destinations.nat]
        type = "nat"
        endpoint = "{endpoint}"
        api_key_env = "NAT_API_KEY"
        """) + rate_line + concurrency_line + textwrap.dedent("""
        [[audiences]]
        name = "Paced"
        source = "shop"
        destinations = ["nat"]
        query = "SELECT id AS user_id, email FROM customers"
        """))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=2_500)
    parser.add_argument("--rate", type=float, default=50.0, help="rate_limit configured and enforced")
    parser.add_argument("--concurrency", type=int, default=None, help="default: the destination's")
    args = parser.parse_args()
    accepted_at: list[float] = []
    lock = threading.Lock()

    def stamp(_count: int) -> None:
        with lock:
            accepted_at.append(time.monotonic())

    with tempfile.TemporaryDirectory(prefix="syncd-paced-") as tmp_name, NatStandIn(KEY) as nat:
        tmp = Path(tmp_name)
        write_source(tmp / "shop.db", args.members)
        config = load_config(write_config(tmp, nat.endpoint, args.rate, args.concurrency),
                             {"NAT_API_KEY": KEY})
        nat.rate_limit, nat.after_accept = args.rate, stamp
        engine = open_state(config)
        time.sleep(1.0)  # the stand-in's bucket starts full, as a real API's would be at rest
        started = time.monotonic()
        report = run_once(config, Options(), engine=engine)
        elapsed = time.monotonic() - started
        engine.dispose()
        limited, requests = nat.rate_limited, nat.requests
    span = accepted_at[-1] - accepted_at[0] if len(accepted_at) > 1 else float("nan")
    achieved = (len(accepted_at) - 1) / span
    row = {"members": args.members, "rate_limit": args.rate, "requests": requests,
           "accepted": len(accepted_at), "429s": limited, "run_s": round(elapsed, 1),
           "achieved/s": round(achieved, 2), "of_allowed": f"{achieved / args.rate:.1%}",
           "outcome": report.outcome}
    print(table([row], list(row)))


if __name__ == "__main__":
    main()
