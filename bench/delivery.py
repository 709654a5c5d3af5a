"""Identify calls per second through syncd's `delivery.Sender` versus a bare httpx client.

    .venv/bin/python bench/delivery.py                  # 3,000 calls, concurrency 8, 3 rounds
    .venv/bin/python bench/delivery.py --calls 20000 --concurrency 16 --rounds 3

Both send the same Identify payloads to the same local Nat stand-in
(`syncd.standins.NatStandIn`, which answers at once) with the same concurrency and
keep-alive, alternating within one run (bare, syncd, bare, syncd, ...); the best round
of each is reported. The stand-in runs in its own process (`--in-process` to share
ours), so its Python threads do not compete with the client for our GIL.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table

from syncd.config import DestinationConfig, Secret
from syncd.delivery.destinations.nat import Nat
from syncd.delivery.sender import Sender, Verdict
from syncd.dev.standins import NatStandIn
from syncd.identify import identify
from syncd.model import Enter

KEY = "bench-nat-key"


def serve() -> None:
    """The stand-in process: print the endpoint, serve until stdin closes."""
    with NatStandIn(KEY) as nat:
        print(nat.endpoint, flush=True)
        sys.stdin.read()


def messages(count: int) -> list[dict[str, Any]]:
    at = datetime.now(UTC)
    return [
        identify(Enter(subject=f"u:{i}", user_id=str(i), anonymous_id=None, email=f"user{i}@example.com",
                       seq=0), "bench_audience", "nat", "Nat", at)
        for i in range(count)
    ]


def nat_destination(endpoint: str, concurrency: int) -> Nat:
    return Nat(DestinationConfig(name="nat", type="nat", api_key=Secret(KEY), rate_limit=None,
                                 concurrency=concurrency, timeout=10.0, settings={"endpoint": endpoint}))


async def via_syncd(endpoint: str, payloads: list[dict[str, Any]], concurrency: int) -> float:
    nat = nat_destination(endpoint, concurrency)
    sender = Sender(name="Nat", headers=nat.headers(), concurrency=concurrency, rate_limit=None,
                    timeout=10.0, secrets=nat.secrets())
    try:
        started = time.perf_counter()
        results = await asyncio.gather(*(sender.call(nat.request(m, "bench_audience")) for m in payloads))
        elapsed = time.perf_counter() - started
    finally:
        await sender.aclose()
    assert all(r.verdict is Verdict.ACK for r in results), "the stand-in refused a call"
    return elapsed


async def via_bare_httpx(endpoint: str, payloads: list[dict[str, Any]], concurrency: int) -> float:
    headers = nat_destination(endpoint, concurrency).headers()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=10.0) as client:

        async def post(message: dict[str, Any]) -> int:
            async with gate:
                return (await client.post(endpoint, json=message)).status_code

        started = time.perf_counter()
        statuses = await asyncio.gather(*(post(m) for m in payloads))
        elapsed = time.perf_counter() - started
    assert set(statuses) == {200}, "the stand-in refused a call"
    return elapsed


def main() -> None:
    if sys.argv[1:] == ["serve"]:
        serve()
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--in-process", action="store_true", help="run the stand-in in this process")
    args = parser.parse_args()
    payloads = messages(args.calls)
    if args.in_process:
        server: Any = NatStandIn(KEY).start()
        endpoint = server.endpoint
    else:
        server = subprocess.Popen([sys.executable, __file__, "serve"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None
        endpoint = server.stdout.readline().strip()
    best = {"bare httpx": float("inf"), "syncd Sender": float("inf")}
    try:
        for _ in range(args.rounds):
            best["bare httpx"] = min(best["bare httpx"],
                                     asyncio.run(via_bare_httpx(endpoint, payloads, args.concurrency)))
            best["syncd Sender"] = min(best["syncd Sender"],
                                       asyncio.run(via_syncd(endpoint, payloads, args.concurrency)))
    finally:
        if args.in_process:
            server.stop()
        else:
            server.communicate("")
    bare_rate = args.calls / best["bare httpx"]
    rows = [{"client": name, "calls": args.calls, "concurrency": args.concurrency,
             "best_s": round(seconds, 2), "calls/s": int(args.calls / seconds),
             "of_bare": f"{args.calls / seconds / bare_rate:.0%}"} for name, seconds in best.items()]
    print(f"stand-in: {'in this process' if args.in_process else 'separate process'}; "
          f"best of {args.rounds} rounds each")
    print(table(rows, list(rows[0])))


if __name__ == "__main__":
    main()
