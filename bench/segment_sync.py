"""syncd's first sync to a Segment receiver against a bare client posting the same batches
(issue 18: ≥ 0.8x the bare client, ≥ 20,000 events/s).

    .venv/bin/python bench/segment_sync.py                          # 100,000 members, best of 3
    .venv/bin/python bench/segment_sync.py --state postgresql+psycopg://postgres@127.0.0.1:5432/postgres
    .venv/bin/python bench/segment_sync.py --profile /tmp/send.prof  # one profiled run after the rounds

`SegmentStandIn` runs in its own process in "count" mode (record=False; bench/_standins.py).
A SQLite source holds `--members` members (user id, email and two extra columns, `plan` and
`lifetime_value`: the same Identify events as segment.py's bare client, ~450 bytes each).
Rounds alternate, best of `--rounds` each:

- bare: segment.py's client (one process, 4 calls in flight, batches of 500) posting the
  Identify events syncd sends for these members;
- syncd: the real `run_once` (run/pipeline.py, as `syncd run-once` calls it) in a fresh
  interpreter, a first sync into a new state (a SQLite file, or a new PostgreSQL database on
  the server `--state` names) to `type = "segment"`, batch_size 500, concurrency 4 (the
  type's default), rate_limit 1000 (never paces at ~50 calls/s).

Timed, for syncd: the send phase, from the moment the first call started to the moment the
last answer arrived (Options.latency, the hook the daemon's metrics use, gives each answer's
arrival and its round trip); the whole run_once (snapshot, diff, send, the run's records; not
opening the state, which creates its schema). The stand-in must have counted every event
exactly once (events = members, no duplicate messageId) in as many calls as syncd counted.
Ratio = syncd's send-phase events/s ÷ the bare client's events/s, best against best.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import sqlite3
import sys
import tempfile
import textwrap
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, fresh_state, run_step, table
from _standins import ENV, StandInProcess
from segment import one_round

KEY = "order_completed_last_30days"  # segment.py's audience key: the same events


def write_source(path: Path, members: int) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE members (id TEXT, email TEXT, plan TEXT, lifetime_value INTEGER)")
        db.executemany("INSERT INTO members VALUES (?, ?, 'pro', 480)",
                       ((f"user-{i}", f"user{i}@example.com") for i in range(members)))


def write_config(tmp: Path, endpoint: str, state_url: str) -> Path:
    path = tmp / "config.toml"
    path.write_text(textwrap.dedent(f"""
        [state]
        url = "{state_url}"
        [sources.shop]
        url = "sqlite:///{tmp / 'source.db'}"
        [destinations.cdp]
        type = "segment"
        endpoint = "{endpoint}"
        api_key_env = "SEGMENT_WRITE_KEY"
        batch_size = 500
        rate_limit = 1000
        timeout = "30s"
        [[audiences]]
        name = "{KEY}"
        key = "{KEY}"
        source = "shop"
        destinations = ["cdp"]
        query = "SELECT id AS user_id, email, plan, lifetime_value FROM members"
        """))
    return path


# -- the syncd step, in its own interpreter -------------------------------------------------

def syncd_step(config_path: str, profile: str) -> None:
    """One first sync; its figures as JSON. `profile`: a file for cProfile's statistics of the
    main thread (the event loop: delivery, marking and recording; not the snapshot's thread)."""
    from syncd.config import load_config
    from syncd.run.pipeline import Options, open_state, run_once

    answers: list[tuple[float, float, float]] = []  # (started, answered, process CPU then)

    def on_answer(_destination: str, seconds: float) -> None:
        answered = time.monotonic()
        answers.append((answered - seconds, answered, time.process_time()))

    config = load_config(Path(config_path), ENV)
    engine = open_state(config)
    profiler = cProfile.Profile() if profile else None
    try:
        started = time.monotonic()
        with profiler or nullcontext():
            report = run_once(config, Options(latency=on_answer), engine=engine)
        ended = time.monotonic()
    finally:
        engine.dispose()
    if profiler is not None:
        profiler.dump_stats(profile)
    [pair] = report.pairs
    first, last = min(a[0] for a in answers), max(a[1] for a in answers)
    # From the first answer to the last: the share of the time syncd's process was on a CPU.
    busy = (answers[-1][2] - answers[0][2]) / (answers[-1][1] - answers[0][1])
    emit({"outcome": str(report.outcome), "acknowledged": pair.acknowledged, "calls": report.calls["cdp"],
          "run": ended - started, "send": last - first, "before": first - started, "after": ended - last,
          "busy": busy})


# -- the rounds ------------------------------------------------------------------------------

def syncd_round(stand_ins: StandInProcess, tmp: Path, state: str, members: int,
                profile: str = "") -> dict[str, Any]:
    stand_ins.reset("segment")
    for old in tmp.glob("state.db*"):  # a new SQLite state each round (-wal, -shm too)
        old.unlink()
    with fresh_state(state, str(tmp)) as state_url:
        config = write_config(tmp, stand_ins.urls["segment"], state_url)
        result = run_step(__file__, "syncd", str(config), profile)
    counted = stand_ins.counters("segment")
    if (result["outcome"] != "ok" or result["acknowledged"] != members or counted["events"] != members
            or counted["duplicates"] or counted["accepted_calls"] != result["calls"]):
        raise SystemExit(f"syncd: {result}; the stand-in counted {counted}")
    return result


def rows_of(bare: dict[str, float], syncd: dict[str, Any], members: int) -> list[dict[str, str]]:
    reference = members / bare["seconds"]
    return [
        {"client": "bare httpx", "calls": f"{bare['calls']:,.0f}",
         "events/call": f"{members / bare['calls']:.0f}", "send s": f"{bare['seconds']:.2f}",
         "send events/s": f"{reference:,.0f}", "x bare": "1.00", "run s": "", "run events/s": ""},
        {"client": "syncd run_once", "calls": f"{syncd['calls']:,}",
         "events/call": f"{members / syncd['calls']:.0f}", "send s": f"{syncd['send']:.2f}",
         "send events/s": f"{members / syncd['send']:,.0f}",
         "x bare": f"{members / syncd['send'] / reference:.2f}", "run s": f"{syncd['run']:.2f}",
         "run events/s": f"{members / syncd['run']:,.0f}"},
    ]


def main() -> None:
    if sys.argv[1:2] == ["syncd"]:
        syncd_step(*sys.argv[2:4])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--state", default="sqlite", help="sqlite, or a PostgreSQL server's URL")
    parser.add_argument("--latency", type=float, default=0.0,
                        help="seconds the stand-in waits before each answer (a receiver that far away)")
    parser.add_argument("--profile", default="", help="one more, profiled syncd run: its stats file")
    args = parser.parse_args()
    bare_args = argparse.Namespace(events=args.members, clients=1, batch=500, concurrency=4)
    bares, syncds = [], []
    with tempfile.TemporaryDirectory() as tmp, StandInProcess(record=False) as stand_ins:
        write_source(Path(tmp) / "source.db", args.members)
        stand_ins.delay(segment=args.latency)
        for n in range(args.rounds):
            bares.append(one_round(stand_ins, bare_args))
            syncds.append(syncd_round(stand_ins, Path(tmp), args.state, args.members))
            print(f"round {n + 1}: bare {bares[-1]['seconds']:.2f} s, syncd {json.dumps(syncds[-1])}",
                  flush=True)
        if args.profile:
            profiled = syncd_round(stand_ins, Path(tmp), args.state, args.members, args.profile)
            print(f"profiled: {json.dumps(profiled)} -> {args.profile}")
    bare = min(bares, key=lambda r: r["seconds"])
    syncd = min(syncds, key=lambda r: r["send"])
    rows = rows_of(bare, syncd, args.members)
    print(f"\n{args.members:,} members, state {args.state.split(':')[0]}, answers delayed "
          f"{args.latency * 1000:.0f} ms, best of {args.rounds} "
          f"(syncd's best run_once: {min(r['run'] for r in syncds):.2f} s; before the first call "
          f"{syncd['before']:.2f} s, after the last answer {syncd['after']:.2f} s; syncd's process on a CPU "
          f"{syncd['busy']:.0%} of the send phase)")
    print(table(rows, list(rows[0])))


if __name__ == "__main__":
    main()
