"""The ledger's snapshot store on real SQLite and PostgreSQL: replace_members keeps the
previous snapshot on failure, lets the first of duplicate rows win, and rewrites what changed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, select

from syncd import ledger
from syncd.config import Config, ScheduleConfig
from syncd.ledger import M, SnapshotCounts
from syncd.plan import SnapshotRow
from syncd.sync import open_state


@pytest.fixture
def engine(state_url: str) -> Iterator[Engine]:
    config = Config(path="-", state_url=state_url, schedule=ScheduleConfig(), sources={},
                    destinations={}, audiences=())
    engine = open_state(config)
    yield engine
    engine.dispose()


def row(user_id: str, email: str | None = None, **traits: object) -> SnapshotRow:
    return SnapshotRow(user_id=user_id, anonymous_id=None, email=email, url=None, traits=dict(traits))


def members(engine: Engine, key: str) -> dict[str, tuple[str | None, str | None]]:
    with engine.connect() as conn:
        result = conn.execute(select(M.c.subject, M.c.email, M.c.traits).where(M.c.audience_key == key))
        return {r.subject: (r.email, r.traits) for r in result}


def test_replace_members_adds_removes_and_rewrites_changed_rows(engine: Engine) -> None:
    ledger.replace_members(engine, "a", [row("1", "one@x.io"), row("2", "two@x.io", plan="pro")],
                           SnapshotCounts())
    ledger.replace_members(engine, "b", [row("1", "b@x.io")], SnapshotCounts())

    counts = ledger.replace_members(
        engine, "a", [row("2", "new@x.io", plan="max"), row("3"), row("2", "dup@x.io")], SnapshotCounts()
    )

    assert (counts.members, counts.duplicates) == (2, 1)
    assert members(engine, "a") == {"u:2": ("new@x.io", '{"plan": "max"}'), "u:3": (None, None)}
    assert members(engine, "b") == {"u:1": ("b@x.io", None)}  # another audience is untouched


def test_replace_members_keeps_the_previous_snapshot_if_the_source_fails(engine: Engine) -> None:
    ledger.replace_members(engine, "a", [row("1", "one@x.io")], SnapshotCounts())

    def failing() -> Iterator[SnapshotRow]:
        yield row("2")
        raise RuntimeError("source connection lost")

    with pytest.raises(RuntimeError):
        ledger.replace_members(engine, "a", failing(), SnapshotCounts())

    assert members(engine, "a") == {"u:1": ("one@x.io", None)}
    ledger.replace_members(engine, "a", [row("4")], SnapshotCounts())  # the same pooled connection works
    assert members(engine, "a") == {"u:4": (None, None)}


def test_an_empty_snapshot_empties_the_audience(engine: Engine) -> None:
    ledger.replace_members(engine, "a", [row("1")], SnapshotCounts())
    counts = ledger.replace_members(engine, "a", [], SnapshotCounts())
    assert (counts.members, counts.duplicates, members(engine, "a")) == (0, 0, {})
