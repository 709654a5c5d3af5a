"""Events per second into the Segment stand-in from a bare httpx client (issue 18's reference
figure), and the stand-in's own ceiling.

    .venv/bin/python bench/segment.py                        # 100,000 events, batches of 500
    .venv/bin/python bench/segment.py --events 100000 --batch 500 --concurrency 4 --clients 2

The stand-in (`SegmentStandIn`) runs in its own process (bench/_standins.py), each client in
another. A client builds its events first (Identify events from `syncd.identify.identify`,
with an email and two extra traits, as a first sync sends them), then, timed, serialises
and posts them in calls of `--batch` events (`{"batch": [...], "sentAt": ...}`, Basic auth
with the write key), keep-alive, `--concurrency` calls in flight, as fast as it can; every
call must be a 200. Per stand-in mode (`record`: keeps every event, as tests use it;
`count`: counts and messageIds only) and best of `--rounds`:

- end to end: events/s and calls/s across the clients (all events ÷ the slowest client);
- the stand-in's ceiling: events ÷ the CPU seconds its process spent in the round, what it
  would take with a core to itself (its threads share one GIL, so it never uses more).

syncd's own sending (issue 18) is to reach 0.8x of the end-to-end figure, with the stand-in
not the bottleneck: its ceiling must stay well above what the clients reach.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table
from _standins import KEYS, StandInProcess

from syncd.delivery.destinations.segment import encoded
from syncd.dev.standins import basic_auth
from syncd.identify import identify
from syncd.model import Enter


def make_events(count: int, start: int) -> list[dict[str, Any]]:
    """The Identify events syncd sends (Segment's: without `integrations`, a content messageId)."""
    at = datetime.now(UTC)
    return [json.loads(encoded(identify(
                Enter(subject=f"u:{i}", user_id=f"user-{i}", anonymous_id=None, email=f"user{i}@example.com",
                      seq=0, traits={"plan": "pro", "lifetime_value": 480}),
                "order_completed_last_30days", "cdp", "Segment", at)))
            for i in range(start, start + count)]


async def post_all(endpoint: str, events: list[dict[str, Any]], batch: int, concurrency: int) -> float:
    """Post every event in calls of `batch`; the seconds it took."""
    headers = {"Authorization": basic_auth(KEYS["segment"]), "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=30.0) as client:

        async def post(chunk: list[dict[str, Any]]) -> int:
            async with gate:
                sent_at = datetime.now(UTC).isoformat()
                body = json.dumps({"batch": chunk, "sentAt": sent_at}, separators=(",", ":")).encode()
                return (await client.post(endpoint, content=body)).status_code

        started = time.perf_counter()
        statuses = await asyncio.gather(*(post(events[i:i + batch]) for i in range(0, len(events), batch)))
        elapsed = time.perf_counter() - started
    if set(statuses) != {200}:
        raise SystemExit(f"the stand-in answered {sorted(set(statuses))}")
    return elapsed


def client(endpoint: str, count: int, start: int, batch: int, concurrency: int) -> None:
    """A client process: its share of the events; prints the seconds it took."""
    events = make_events(count, start)
    print(json.dumps({"seconds": asyncio.run(post_all(endpoint, events, batch, concurrency))}), flush=True)


def one_round(stand_ins: StandInProcess, args: argparse.Namespace) -> dict[str, float]:
    stand_ins.reset("segment")
    share = args.events // args.clients
    processes = [subprocess.Popen([sys.executable, __file__, "client", stand_ins.urls["segment"],
                                   str(share), str(n * share), str(args.batch), str(args.concurrency)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                 for n in range(args.clients)]
    cpu = stand_ins.cpu_seconds()  # the clients build their events first: not counted here
    results = [json.loads(p.communicate()[0].splitlines()[-1]) for p in processes]
    cpu = stand_ins.cpu_seconds() - cpu
    counters = stand_ins.counters("segment")
    events = share * args.clients
    if counters["events"] != events or counters["duplicates"]:
        raise SystemExit(f"the stand-in accepted {counters['events']} events, expected {events}")
    seconds = max(r["seconds"] for r in results)
    return {"seconds": seconds, "events": events, "calls": counters["accepted_calls"], "cpu": cpu}


def _row(mode: str, best: dict[str, float]) -> dict[str, str]:
    events, seconds, cpu = best["events"], best["seconds"], best["cpu"]
    return {"stand-in": mode, "events": f"{events:,.0f}", "calls": f"{best['calls']:,.0f}",
            "best_s": f"{seconds:.2f}", "events/s": f"{events / seconds:,.0f}",
            "calls/s": f"{best['calls'] / seconds:.1f}", "stand-in CPU s": f"{cpu:.2f}",
            "ceiling events/s": f"{events / cpu:,.0f}"}


def main() -> None:
    if sys.argv[1:2] == ["client"]:
        endpoint, *numbers = sys.argv[2:]
        client(endpoint, *(int(n) for n in numbers))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500, help="events per call")
    parser.add_argument("--concurrency", type=int, default=4, help="calls in flight per client")
    parser.add_argument("--clients", type=int, default=1, help="client processes")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", default="record,count", help="stand-in modes: record, count")
    args = parser.parse_args()
    rows = []
    for mode in args.modes.split(","):
        with StandInProcess(record=mode == "record") as stand_ins:
            best = min((one_round(stand_ins, args) for _ in range(args.rounds)), key=lambda r: r["seconds"])
        rows.append(_row(mode, best))
        print(table(rows[-1:], list(rows[-1])), flush=True)
    sample = json.dumps({"batch": make_events(args.batch, 0)}, separators=(",", ":"))
    print(f"\n{args.clients} client process(es) x {args.concurrency} calls in flight, {args.batch} events "
          f"per call ({len(sample) / 1024:.0f} KB), best of {args.rounds}")
    print(table(rows, list(rows[0])))


if __name__ == "__main__":
    main()
