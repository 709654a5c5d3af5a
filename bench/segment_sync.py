"""syncd's first sync to a Segment receiver against a bare client posting the same batches
(issue 18: ≥ 0.8x the bare client, ≥ 20,000 events/s).

    .venv/bin/python bench/segment_sync.py                    # 100,000 members, best of 3
    .venv/bin/python bench/segment_sync.py --latency 0.05     # the stand-in answers 50 ms later
    .venv/bin/python bench/segment_sync.py --profile /tmp/send.prof --states sqlite  # + one profiled run
    .venv/bin/python bench/segment_sync.py --states postgresql+psycopg://postgres@127.0.0.1:5432/postgres

`SegmentStandIn` runs in its own process in "count" mode (record=False; bench/_standins.py).
A SQLite source holds `--members` members (user id, email and two extra columns, `plan` and
`lifetime_value`: the same Identify events as segment.py's bare client, ~450 bytes each).
Rounds alternate, best of `--rounds` each:

- bare: segment.py's client (one process, 4 calls in flight, batches of 500) posting the
  Identify events syncd sends for these members;
- syncd: the real `run_once` (run/pipeline.py, as `syncd run-once` calls it) in a fresh
  interpreter, a first sync into a new state, per `--states` (a SQLite file, or a new PostgreSQL
  database on the server a URL names; by default SQLite, and PostgreSQL when
  SYNCD_TEST_POSTGRES_URL is set) to `type = "segment"`, batch_size 500, concurrency 4 (the
  type's default), rate_limit 1000 (never paces at ~50 calls/s).

Timed, for syncd (each state's best against the bare client's best): the send phase, from
the moment the first call started to the moment the last answer arrived (Options.latency,
the hook the daemon's metrics use, gives each answer's arrival and its round trip); the whole
run_once (snapshot, diff, send, the run's records; not opening the state, which creates its
schema). The stand-in must have counted every event exactly once (events = members, no
duplicate messageId) in as many calls as syncd counted.
"x bare" = syncd's send-phase events/s ÷ the bare client's events/s; "busy" = the CPU time
syncd's process used from its first answer to its last, over that time (below 100%: it waited,
for the receiver or for a core); cProfile's `--profile` covers the main thread (the event loop:
delivery with its database writes; not the snapshot's thread).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
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
POSTGRES = os.environ.get("SYNCD_TEST_POSTGRES_URL")


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
    """One first sync; its figures as JSON. `profile`: a file for cProfile's statistics."""
    from syncd.config import load_config
    from syncd.run.pipeline import Options, open_state, run_once, settle_heap

    answers: list[tuple[float, float, float]] = []  # (started, answered, process CPU then)

    def on_answer(_destination: str, seconds: float) -> None:
        answered = time.monotonic()
        answers.append((answered - seconds, answered, time.process_time()))

    config = load_config(Path(config_path), ENV)
    settle_heap()  # as the CLI does before a command
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


def bare_row(bare: dict[str, float], members: int) -> dict[str, str]:
    return {"client": "bare httpx", "state": "", "calls": f"{bare['calls']:,.0f}",
            "events/call": f"{members / bare['calls']:.0f}", "send s": f"{bare['seconds']:.2f}",
            "send events/s": f"{members / bare['seconds']:,.0f}", "x bare": "1.00"}


def syncd_row(state: str, syncds: list[dict[str, Any]], bare: dict[str, float],
              members: int) -> dict[str, str]:
    """Its best send phase against the bare client's best; its best run_once."""
    best = min(syncds, key=lambda r: r["send"])
    run = min(r["run"] for r in syncds)
    return {"client": "syncd run_once", "state": state.split(":")[0].split("+")[0],
            "calls": f"{best['calls']:,}", "events/call": f"{members / best['calls']:.0f}",
            "send s": f"{best['send']:.2f}", "send events/s": f"{members / best['send']:,.0f}",
            "x bare": f"{bare['seconds'] / best['send']:.2f}", "busy": f"{best['busy']:.0%}",
            "before 1st call s": f"{best['before']:.2f}", "run s": f"{run:.2f}",
            "run events/s": f"{members / run:,.0f}"}


def main() -> None:
    if sys.argv[1:2] == ["syncd"]:
        syncd_step(*sys.argv[2:4])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--states", nargs="+", default=["sqlite", *filter(None, [POSTGRES])],
                        help="each sqlite or a PostgreSQL server's URL (default: sqlite, "
                             "and $SYNCD_TEST_POSTGRES_URL if set)")
    parser.add_argument("--latency", type=float, default=0.0,
                        help="seconds the stand-in waits before each answer (a receiver that far away)")
    parser.add_argument("--profile", default="", help="one more, profiled syncd run: its stats file")
    args = parser.parse_args()
    bare_args = argparse.Namespace(events=args.members, clients=1, batch=500, concurrency=4)
    bares: list[dict[str, float]] = []
    syncds: dict[str, list[dict[str, Any]]] = {state: [] for state in args.states}
    with tempfile.TemporaryDirectory() as tmp, StandInProcess(record=False) as stand_ins:
        write_source(Path(tmp) / "source.db", args.members)
        stand_ins.delay(segment=args.latency)
        for n in range(args.rounds):
            bares.append(one_round(stand_ins, bare_args))
            print(f"round {n + 1}: bare {bares[-1]['seconds']:.2f} s", flush=True)
            for state, results in syncds.items():
                results.append(syncd_round(stand_ins, Path(tmp), state, args.members))
                print(f"  syncd, state {state.split(':')[0]}: {json.dumps(results[-1])}", flush=True)
        if args.profile:
            profiled = syncd_round(stand_ins, Path(tmp), args.states[0], args.members, args.profile)
            print(f"profiled: {json.dumps(profiled)} -> {args.profile}")
    bare = min(bares, key=lambda r: r["seconds"])
    rows = [bare_row(bare, args.members),
            *(syncd_row(state, results, bare, args.members) for state, results in syncds.items())]
    print(f"\n{args.members:,} members, answers delayed {args.latency * 1000:.0f} ms, best of {args.rounds}; "
          "busy: syncd's process on a CPU, share of its send phase")
    print(table(rows, list(rows[-1])))


if __name__ == "__main__":
    main()
