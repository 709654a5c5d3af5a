"""How the state database grows with members and runs, with and without retention.

    .venv/bin/python bench/growth.py                          # 20k members, 16 runs 12 h apart
    .venv/bin/python bench/growth.py --members 200000 --runs 30 --retention none
    .venv/bin/python bench/growth.py --state postgresql+psycopg://postgres@127.0.0.1:5432/postgres

Each simulated run uses the real ledger code: a snapshot (`replace_members`), the diff
paged as in a run, every change recorded as acknowledged (`mark_in_flight`,
`record_outcomes`; no network), the run records, then `prune` with the retention
(as `run_once` does). Between runs `--churn` of the members leave for good and as many
new ones arrive, so without pruning the ledger keeps every user who ever left.
Time is simulated with freezegun; the retention default here is short (3d) so that a
few runs show its effect.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections import deque
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from freezegun import freeze_time
from sqlalchemy import Engine, func, select

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fresh_state, table

from syncd.config import parse_duration
from syncd.model import SnapshotRow
from syncd.state.engine import create_state_engine, migrate
from syncd.state.runs import Pruned, finish_run, prune, record_audience, record_result, start_run
from syncd.state.sends import Outcome, mark_in_flight, record_outcomes
from syncd.state.snapshots import SnapshotCounts, replace_members
from syncd.state.tables import RUN, L
from syncd.state.work import WorkList

KEY, DEST, PAGE = "growth", "nat", 500


def snapshot(ids: deque[int]) -> Iterator[SnapshotRow]:
    for i in ids:
        yield SnapshotRow.of(f"user{i:09d}", email=f"user{i}@example.com", traits={"plan": "pro"})


def deliver(engine: Engine) -> tuple[int, int]:
    """Every change acknowledged, page by page, as a run records them."""
    done = [0, 0]
    with engine.connect() as conn, WorkList(conn, KEY, DEST, needs_email=True) as work:
        for index, value in enumerate((True, False)):
            after = ""
            while page := work.page(value, after, PAGE):
                after = page[-1].cursor
                mark_in_flight(engine, KEY, DEST, page)
                record_outcomes(engine, KEY, DEST,
                                       [Outcome(c.subject, c.value, ident=c.ident, acked=True, attempts=1)
                                        for c in page])
                done[index] += len(page)
    return done[0], done[1]


def size_mb(engine: Engine, url: str) -> float:
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            size = conn.exec_driver_sql("SELECT pg_database_size(current_database())").scalar_one()
            return round(size / 2**20, 1)
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    path = url.removeprefix("sqlite:///")
    return round(sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p)) / 2**20, 1)


def one_run(engine: Engine, ids: deque[int], at: datetime, retention: timedelta | None) -> dict[str, int]:
    with freeze_time(at):
        run_id = start_run(engine, at)
        counts = replace_members(engine, KEY, snapshot(ids), SnapshotCounts())
        record_audience(engine, run_id, KEY, counts, None)
        entered, left = deliver(engine)
        record_result(engine, run_id, {"audience_key": KEY, "destination": DEST,
                                              "members": counts.members, "entered": entered,
                                              "left": left, "sent": entered + left,
                                              "acknowledged": entered + left})
        finish_run(engine, run_id, "ok")
        pruned = prune(engine, at - retention) if retention else Pruned()
    return {"entered": entered, "left": left, "pruned_rows": pruned.ledger_rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=16)
    parser.add_argument("--interval", default="12h", help="simulated time between runs")
    parser.add_argument("--retention", default="3d", help="a duration, or 'none' (never prune)")
    parser.add_argument("--churn", type=float, default=0.01)
    parser.add_argument("--state", default="sqlite", help="'sqlite' or a PostgreSQL server URL")
    args = parser.parse_args()
    retention = None if args.retention == "none" else parse_duration(args.retention)
    interval, moved = parse_duration(args.interval), max(1, int(args.members * args.churn))
    ids, next_id = deque(range(args.members)), args.members
    rows = []
    with tempfile.TemporaryDirectory(prefix="syncd-growth-") as tmp, fresh_state(args.state, tmp) as url:
        engine = create_state_engine(url)
        migrate(engine)
        start = datetime(2026, 1, 1, 9, tzinfo=UTC)
        for number in range(1, args.runs + 1):
            at = start + (number - 1) * interval
            result = one_run(engine, ids, at, retention)
            with engine.connect() as conn:
                ledger_rows = conn.scalar(select(func.count()).select_from(L))
                runs = conn.scalar(select(func.count()).select_from(RUN))
            rows.append({"run": number, "day": f"{(at - start).total_seconds() / 86400:.1f}", **result,
                         "ledger_rows": ledger_rows, "runs_kept": runs, "db_mb": size_mb(engine, url)})
            print(table(rows[-1:], list(rows[-1])) if number == 1 else
                  table(rows[-1:], list(rows[-1])).splitlines()[1], flush=True)
            for _ in range(moved):  # churn for the next run: some leave for good, new ones arrive
                ids.popleft()
                ids.append(next_id)
                next_id += 1
        engine.dispose()
    print(f"\n{args.members} members, {args.churn:.0%} churn per run, every {args.interval}, "
          f"retention {args.retention}, state {engine.dialect.name}")


if __name__ == "__main__":
    main()
