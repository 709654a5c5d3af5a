"""The ledger's bookkeeping per change during a first sync, without HTTP (issue 18).

    .venv/bin/python bench/ledger.py                        # 100,000 changes; SQLite, and
                                                            # PostgreSQL if SYNCD_TEST_POSTGRES_URL is set
    .venv/bin/python bench/ledger.py --changes 20000 --state sqlite --repeat 3

Per backend and scenario, a fresh state database (SQLite: a file in a temporary folder;
PostgreSQL: a new database on the server SYNCD_TEST_POSTGRES_URL names, dropped after) with
one audience of N members (`replace_members`, with emails; setup, not timed) and an empty
ledger: the first sync of that audience to a destination keyed by the user (ident "",
User.com's way) and to one keyed by email (ident = email, Nat's way). Pages of 500 as a run
makes them (`DestinationWork` / `WorkList.page`), each `mark_in_flight`, then
`record_outcomes` with every change acknowledged, or (`1% not acked`) with one change in a
hundred not: rejected (a 4xx with a long error, truncated), transient (3 attempts, 503),
uncertain (a timeout after sending) or untried (the destination was set aside), in turn.

Times are each function's own (wall clock, `perf_counter`, summed over the pages) in µs per
change; changes/s is N over the three together: the ceiling the ledger alone puts on a run.
The real functions on real engines (`create_state_engine`, `migrate`); nothing is asserted
on time, but the ledger is checked after each scenario (every change acknowledged or not as
its outcome said), so a faster function that writes the wrong thing does not go unnoticed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fresh_state, table
from sqlalchemy import Engine, func, select

from syncd.model import Change, SnapshotRow
from syncd.state.engine import create_state_engine, migrate
from syncd.state.sends import Outcome, mark_in_flight, record_outcomes
from syncd.state.snapshots import SnapshotCounts, replace_members
from syncd.state.tables import L
from syncd.state.work import DestinationWork

KEY = "bench_audience"
PAGE = 500
LONG_ERROR = "400 Bad Request: " + "x" * 700  # record_outcomes keeps 500 characters
DESTINATIONS = {"by user": ("usercom", False), "by email": ("nat", True)}


def member(i: int) -> SnapshotRow:
    cid = format((i * 2654435761) % (1 << 32), "08x")  # reproducible, in no particular order
    return SnapshotRow.of(cid, email=f"{cid}@example.com")


def outcome(change: Change, i: int, failing: bool) -> Outcome:
    """Acknowledged, or (failing: one change in a hundred) each way of not being acknowledged in turn."""
    if not failing or i % 100 != 99:
        return Outcome(change.subject, change.value, acked=True, ident=change.ident, attempts=1, status=200)
    kind = (i // 100) % 4
    if kind == 0:
        return Outcome(change.subject, change.value, ident=change.ident, attempts=1, rejected=True,
                       status=400, error=LONG_ERROR)
    if kind == 1:
        return Outcome(change.subject, change.value, ident=change.ident, attempts=3, status=503,
                       error="503 Service Unavailable")
    if kind == 2:
        return Outcome(change.subject, change.value, ident=change.ident, attempts=1, uncertain=True,
                       error="timed out after sending")
    return Outcome(change.subject, change.value, ident=change.ident)  # untried: set aside


def first_sync(engine: Engine, destination: str, needs_email: bool, failing: bool) -> dict[str, float]:
    """Every page of the pair's first sync: page, mark in flight, record; seconds per step."""
    spent = {"page": 0.0, "mark_in_flight": 0.0, "record_outcomes": 0.0}
    seen = 0
    with DestinationWork(engine, destination, needs_email) as work:
        pages = work.make(KEY)
        after: tuple[str, str] = ("", "")
        while True:
            started = time.perf_counter()
            page = pages.page(True, after, PAGE)
            marked = time.perf_counter()
            spent["page"] += marked - started
            if not page:
                break
            mark_in_flight(engine, KEY, destination, page)
            sent = time.perf_counter()
            outcomes = [outcome(c, seen + n, failing) for n, c in enumerate(page)]
            recorded = time.perf_counter()
            record_outcomes(engine, KEY, destination, outcomes)
            spent["mark_in_flight"] += sent - marked
            spent["record_outcomes"] += time.perf_counter() - recorded
            seen += len(page)
            after = page[-1].cursor
    return spent


def check(engine: Engine, destination: str, changes: int, failing: bool) -> None:
    """The ledger as the outcomes left it: acknowledged rows at seq 1, the rest pending or not."""
    with engine.connect() as conn:
        acked = conn.scalar(select(func.count()).where(
            L.c.destination == destination, L.c.acked.is_(True), L.c.seq == 1, L.c.in_flight.is_(None),
            L.c.pending.is_(None)))
        rows = conn.scalar(select(func.count()).where(L.c.destination == destination))
    not_acked = changes // 100 if failing else 0
    assert (rows, acked) == (changes, changes - not_acked), (rows, acked, changes, not_acked)


def scenario(state: str, changes: int, name: str, failing: bool) -> dict[str, Any]:
    destination, needs_email = DESTINATIONS[name]
    with tempfile.TemporaryDirectory(prefix="syncd-ledger-") as tmp, fresh_state(state, tmp) as url:
        engine = create_state_engine(url)
        try:
            migrate(engine)
            counts = SnapshotCounts()
            replace_members(engine, KEY, (member(i) for i in range(changes)), counts)
            spent = first_sync(engine, destination, needs_email, failing)
            check(engine, destination, changes, failing)
        finally:
            engine.dispose()
    ledger = spent["mark_in_flight"] + spent["record_outcomes"]
    return {
        "state": "sqlite" if state == "sqlite" else "postgresql",
        "keyed": name, "outcomes": "1% not acked" if failing else "all acked", "changes": changes,
        **{f"{step} µs": round(seconds / changes * 1e6, 1) for step, seconds in spent.items()},
        "ledger µs": round(ledger / changes * 1e6, 1),
        "ledger changes/s": int(changes / ledger),
        "with page changes/s": int(changes / (ledger + spent["page"])),
    }


def best(tries: list[dict[str, Any]]) -> dict[str, Any]:
    """The try whose ledger (mark + record) was fastest, with its own breakdown."""
    result = dict(min(tries, key=lambda t: t["ledger µs"]))
    result["tries"] = len(tries)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=100_000)
    parser.add_argument("--state", nargs="+", default=None,
                        help="'sqlite' and/or PostgreSQL server URLs (default: sqlite, and "
                             "SYNCD_TEST_POSTGRES_URL when set)")
    parser.add_argument("--repeat", type=int, default=1, help="tries per scenario; the best is kept")
    args = parser.parse_args()
    states = args.state or ["sqlite", *filter(None, [os.environ.get("SYNCD_TEST_POSTGRES_URL")])]
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {args.changes:,} changes, pages of {PAGE}", flush=True)
    rows = []
    for state in states:
        for name in DESTINATIONS:
            for failing in (False, True):
                rows.append(best([scenario(state, args.changes, name, failing) for _ in range(args.repeat)]))
                print(table(rows[-1:], list(rows[-1])), flush=True)
    print("\n" + table(rows, list(rows[0])))


if __name__ == "__main__":
    main()
