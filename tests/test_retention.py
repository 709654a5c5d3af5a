"""[state] retention: each run prunes old run history (never the latest record of an
audience or pair) and ledger rows that say no more than "never sent"; the diff is unchanged."""

from __future__ import annotations

from freezegun import freeze_time
from sqlalchemy import select
from test_status import rows_at

from syncd.state.engine import create_state_engine
from syncd.state.tables import RUN, RUN_AUDIENCE, L

from conftest import Env, audience_toml


def _state(env: Env) -> tuple[list[str], dict[str, bool | None], set[str]]:
    """(run start days, buyers' ledger at Nat: subject -> acked, audiences with run records)."""
    engine = create_state_engine(env.state_url)
    try:
        with engine.connect() as conn:
            runs = [r.strftime("%m-%d") for r in conn.scalars(select(RUN.c.started_at).order_by(RUN.c.id))]
            rows = conn.execute(select(L.c.subject, L.c.acked).where(
                L.c.audience_key == "buyers", L.c.destination == "nat"))
            audiences = set(conn.scalars(select(RUN_AUDIENCE.c.audience_key)))
            return runs, {r.subject: r.acked for r in rows}, audiences
    finally:
        engine.dispose()


def _run_at(env: Env, day: str, audiences: str) -> None:
    with freeze_time(f"2026-{day} 09:00:00", real_asyncio=True):
        report = env.run(env.config(audiences=audiences))
    assert report.exit_code == 0


def test_retention_prunes_old_history_and_settled_rows_but_keeps_what_matters(env: Env) -> None:
    buyers = audience_toml("Buyers", ["nat"])
    retired = audience_toml("Retired", ["usercom"])  # dropped from the config after the first run
    env.shop.members("u1", "u2", "u3")
    _run_at(env, "10-01", buyers + retired)
    env.shop.members("u1", "u3")
    _run_at(env, "10-02", buyers)  # u2 leaves: Nat acknowledges false
    env.shop.members("u1")
    _run_at(env, "11-05", buyers)  # u3 leaves, within the retention period of the next run

    _run_at(env, "11-10", buyers)  # 30 days back is 10-11

    runs, nat_ledger, audiences = _state(env)
    # 10-02 is gone; 10-01 stays: it holds the latest (only) record of the retired audience.
    assert runs == ["10-01", "11-05", "11-10"]
    assert audiences == {"buyers", "retired"}
    # u2 settled at false before 10-11: pruned. u3 settled at false later: kept.
    assert nat_ledger == {"u:u1": True, "u:u3": False}

    env.shop.members("u1", "u2")  # u2 comes back: exactly as if never sent, they get `true`
    nat_calls = len(env.nat.accepted())
    _run_at(env, "11-11", buyers)
    assert [(c["userId"], c["traits"]["buyers"]) for c in env.nat.accepted()[nat_calls:]] == [("u2", True)]
    # ... under a messageId never used before (its first `true` had seq 0 too)
    earlier = {c["messageId"] for c in env.nat.accepted()[:nat_calls]}
    assert env.nat.accepted()[-1]["messageId"] not in earlier
    assert _state(env)[1] == {"u:u1": True, "u:u2": True, "u:u3": False}


def test_nothing_is_pruned_within_the_retention_period(env: Env) -> None:
    buyers = audience_toml("Buyers", ["nat"])
    env.shop.members("u1", "u2")
    _run_at(env, "10-01", buyers)
    env.shop.members("u1")
    _run_at(env, "10-02", buyers)
    _run_at(env, "10-20", buyers)

    runs, nat_ledger, _ = _state(env)
    assert runs == ["10-01", "10-02", "10-20"]
    assert nat_ledger == {"u:u1": True, "u:u2": False}


def test_a_backlog_streak_longer_than_the_retention_keeps_its_age(sqlite_env: Env) -> None:
    """Held exits are never tried, so only the runs date the backlog: retention keeps the pair's
    last `ok` run and the first run of the streak since, however old, and drops the rest."""
    env = sqlite_env
    buyers = audience_toml("Buyers", ["nat"])
    ids = [f"u{i:02d}" for i in range(20)]
    env.shop.members(*ids)
    _run_at(env, "08-01", buyers)
    _run_at(env, "09-01", buyers)
    env.shop.members(*ids[:8])  # 12 of 20 leave: the guard holds them in every run from here
    for day in ("09-02", "09-20", "10-05"):  # 10-05 prunes what started before 09-05
        with freeze_time(f"2026-{day} 09:00:00", real_asyncio=True):
            assert env.run(env.config(audiences=buyers)).outcome == "held"

    assert _state(env)[0] == ["09-01", "09-02", "09-20", "10-05"]  # 08-01 went
    row = rows_at(env.config(audiences=buyers), "2026-10-05 10:00:00")[0]
    assert (row["pending"], row["oldest_pending_at"]) == (12, "2026-09-02T09:00:00Z")
