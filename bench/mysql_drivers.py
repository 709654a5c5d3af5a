"""Which MySQL driver the `mysql` extra brings: PyMySQL against mysqlclient, streaming a large
audience through syncd's own source code (`source.stream_members`, server-side cursor).

    .venv/bin/python bench/mysql_drivers.py                           # 200,000 rows
    .venv/bin/python bench/mysql_drivers.py --rows 1000000 --repeat 3
    .venv/bin/python bench/mysql_drivers.py --server root@db.example:3306

It needs both drivers in the interpreter that runs it (mysqlclient builds only with a C
compiler and the MySQL/MariaDB client headers: see bench/README.md). In a new database on the
server it creates `people` with N rows (id, email, plan, score DECIMAL, last_order_at
DATETIME); then, per driver, in a fresh interpreter each (so peak RSS is the step's own):
`syncd` reads every row as a run does (server-side cursor, each row made a member),
`driver` only fetches the same stream (the driver's own cost), `buffered` fetches the whole
result at once as a client-side cursor does (what syncd avoids). The database is dropped.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, run_step, table
from sqlalchemy import create_engine, text

from syncd.source import open_source, stream_members
from syncd.state.snapshots import SnapshotCounts

DRIVERS = {"PyMySQL": "pymysql", "mysqlclient": "mysqldb"}
QUERY = "SELECT id AS user_id, email, plan, score, last_order_at FROM people"


def setup(url: str, rows: int) -> None:
    digits = ", ".join(f"({i})" for i in range(10))
    tables = ", ".join(f"d d{k}" for k in range(len(str(rows - 1))))
    number = " + ".join(f"d{k}.i * {10 ** k}" for k in range(len(str(rows - 1))))
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE d (i INT)"))
        conn.execute(text(f"INSERT INTO d VALUES {digits}"))
        conn.execute(text("CREATE TABLE people (id VARCHAR(20), email VARCHAR(100), plan VARCHAR(20), "
                          "score DECIMAL(10,2), last_order_at DATETIME)"))
        conn.execute(text(
            "INSERT INTO people SELECT CONCAT('u', n), CONCAT('u', n, '@example.com'), 'pro', n / 100, "
            f"TIMESTAMP '2026-11-01 00:00:00' - INTERVAL n SECOND FROM (SELECT {number} AS n FROM {tables}) "
            f"AS numbers WHERE n < {rows}"))
    engine.dispose()


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM). Not ru_maxrss: Linux keeps that across exec, so a step
    would start at its parent's peak and small growth would not show."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024


def step(url: str, mode: str) -> None:
    engine = open_source(url)
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1").all()  # the driver is loaded and a connection made
    before = peak_rss_mb()
    started = time.perf_counter()
    if mode == "syncd":
        counts = SnapshotCounts()
        rows = sum(1 for _ in stream_members(engine, QUERY, datetime.now(UTC), counts))
    elif mode == "driver":
        with engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=2_000).exec_driver_sql(QUERY)
            rows = sum(len(partition) for partition in result.partitions(2_000))
    else:
        with engine.connect() as conn:
            rows = len(conn.exec_driver_sql(QUERY).all())
    seconds = time.perf_counter() - started
    emit({"rows": rows, "seconds": seconds, "peak_mb": peak_rss_mb() - before})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", default="root@127.0.0.1:3306", help="user[:password]@host:port")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=1, help="tries per figure; the best is shown")
    args = parser.parse_args()
    name = f"syncd_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(f"mysql+pymysql://{args.server}/")
    with admin.begin() as conn:
        conn.execute(text(f"CREATE DATABASE `{name}`"))
    try:
        setup(f"mysql+pymysql://{args.server}/{name}", args.rows)
        results = []
        for label, driver in DRIVERS.items():
            for mode in ("syncd", "driver", "buffered"):
                tries = [run_step(__file__, "step", f"mysql+{driver}://{args.server}/{name}", mode)
                         for _ in range(args.repeat)]
                best = min(tries, key=lambda r: r["seconds"])
                results.append({"driver": label, "mode": mode, "rows": f"{best['rows']:,}",
                                "seconds": f"{best['seconds']:.2f}",
                                "rows/s": f"{best['rows'] / best['seconds']:,.0f}",
                                "peak RSS (MB)": f"{max(r['peak_mb'] for r in tries):.1f}"})
        print(table(results, ["driver", "mode", "rows", "seconds", "rows/s", "peak RSS (MB)"]))
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
        admin.dispose()


if __name__ == "__main__":
    if sys.argv[1:2] == ["step"]:
        step(sys.argv[2], sys.argv[3])
    else:
        main()
