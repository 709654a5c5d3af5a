"""The ledger's snapshot store on real SQLite and PostgreSQL: replace_members keeps the
previous snapshot on failure, lets the first of duplicate rows win, and rewrites what changed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, select

from syncd.model import Change, SnapshotRow
from syncd.state.diff import plan_counts
from syncd.state.snapshots import SnapshotCounts, replace_members
from syncd.state.tables import L, M
from syncd.state.work import DestinationWork, WorkList


def row(user_id: str, email: str | None = None, **traits: object) -> SnapshotRow:
    return SnapshotRow.of(user_id, email=email, traits=dict(traits))


def members(engine: Engine, key: str) -> dict[str, tuple[str | None, str | None]]:
    with engine.connect() as conn:
        result = conn.execute(select(M.c.subject, M.c.email, M.c.traits).where(M.c.audience_key == key))
        return {r.subject: (r.email, r.traits) for r in result}


def test_replace_members_adds_removes_and_rewrites_changed_rows(engine: Engine) -> None:
    replace_members(engine, "a", [row("1", "one@x.io"), row("2", "two@x.io", plan="pro")],
                           SnapshotCounts())
    replace_members(engine, "b", [row("1", "b@x.io")], SnapshotCounts())

    counts = replace_members(
        engine, "a", [row("2", "new@x.io", plan="max"), row("3"), row("2", "dup@x.io")], SnapshotCounts()
    )

    assert (counts.members, counts.duplicates) == (2, 1)
    assert members(engine, "a") == {"u:2": ("new@x.io", '{"plan": "max"}'), "u:3": (None, None)}
    assert members(engine, "b") == {"u:1": ("b@x.io", None)}  # another audience is untouched

    replace_members(engine, "a", [row("2"), row("3", "three@x.io")], SnapshotCounts())
    assert members(engine, "a") == {"u:2": (None, None), "u:3": ("three@x.io", None)}  # to and from NULL


def test_replace_members_keeps_the_previous_snapshot_if_the_source_fails(engine: Engine) -> None:
    replace_members(engine, "a", [row("1", "one@x.io")], SnapshotCounts())

    def failing() -> Iterator[SnapshotRow]:
        yield row("2")
        raise RuntimeError("source connection lost")

    with pytest.raises(RuntimeError):
        replace_members(engine, "a", failing(), SnapshotCounts())

    assert members(engine, "a") == {"u:1": ("one@x.io", None)}
    replace_members(engine, "a", [row("4")], SnapshotCounts())  # the same pooled connection works
    assert members(engine, "a") == {"u:4": (None, None)}


def test_an_empty_snapshot_empties_the_audience(engine: Engine) -> None:
    replace_members(engine, "a", [row("1")], SnapshotCounts())
    counts = replace_members(engine, "a", [], SnapshotCounts())
    assert (counts.members, counts.duplicates, members(engine, "a")) == (0, 0, {})


def test_the_work_list_pages_every_change_once_and_counts_like_status(engine: Engine) -> None:
    """A run's work list: every change exactly once, in subject order, page by page (5 a
    page); its counts equal the count-only reading `status` uses, retries and all."""
    ids = [f"{i:02d}" for i in range(40)]

    def snapshot(keep: list[str]) -> list[SnapshotRow]:  # every fifth member has no email
        return [row(i, None if int(i) % 5 == 0 else f"{i}@x.io") for i in keep]

    replace_members(engine, "a", snapshot(ids), SnapshotCounts())
    since = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
    with engine.begin() as conn:  # the destination holds `true` for every third member
        conn.execute(L.insert(), [  # Nat keys by email: a row per (subject, email)
            {"audience_key": "a", "destination": "nat", "subject": f"u:{i}", "acked": True, "seq": 1,
             "ident": snapshot([i])[0].email or "",
             "maybe_true": False, "maybe_false": False, "attempts": 0, "failed": False}
            for i in ids[::3]
        ])
        # a rejected enter and a leave still pending since an earlier run
        conn.execute(L.insert(), {"audience_key": "a", "destination": "nat", "subject": "u:01",
                                  "ident": "01@x.io",
                                  "pending": True, "failed": True, "pending_since": since,
                                  "maybe_true": False, "maybe_false": False, "attempts": 3, "seq": 0})
        conn.execute(L.update().where(L.c.subject == "u:12").values(pending=False, pending_since=since))
    staying = [i for n, i in enumerate(ids) if n % 4]  # every fourth member leaves
    replace_members(engine, "a", snapshot(staying), SnapshotCounts())

    nonces: dict[str, str] = {}

    def walk(fetch: Callable[[tuple[str, str]], list[Change]]) -> list[str]:
        seen, after = [], ("", "")
        while page := fetch(after):
            assert len(page) <= 5
            seen += [c.subject for c in page]
            nonces.update((c.subject, c.nonce) for c in page if c.value)
            after = page[-1].cursor
        return seen

    with engine.connect() as conn:
        status = plan_counts(conn, "a", "nat", needs_email=True)
        with WorkList(conn, "a", "nat", needs_email=True) as work:
            enters = walk(lambda after: work.page(True, after, 5))
            leaves = walk(lambda after: work.page(False, after, 5))
        counts = work.counts
    assert enters == [f"u:{i}" for i in staying if int(i) % 3 and int(i) % 5]
    assert leaves == [f"u:{i}" for i in ids if int(i) % 3 == 0 and int(i) % 4 == 0]
    assert counts == status
    # An enter with a ledger row keeps the row's nonce (u:01's, from before nonces: none);
    # each other one gets a new one, 64 random bits, its own.
    new = [nonce for subject, nonce in nonces.items() if subject != "u:01"]
    assert nonces["u:01"] == "" and len(new) == len(enters) - 1 == len(set(new))
    assert all(len(nonce) == 16 and int(nonce, 16) >= 0 for nonce in new)
    assert (counts.members, counts.entered, counts.left) == (len(staying), len(enters), len(leaves))
    assert counts.skipped == len([i for i in staying if int(i) % 3 and int(i) % 5 == 0])
    assert (counts.failed, counts.retries, counts.oldest_pending) == (1, 2, since)


def test_a_work_list_commits_only_on_a_connection_of_its_own(engine: Engine) -> None:
    """On a caller's connection a WorkList never commits (plan rolls its dry run back); the lists
    DestinationWork makes, given the engine, commit each step on its own connection, so no
    transaction stays open while changes are sent."""
    replace_members(engine, "a", [row("1", "one@x.io"), row("2", "two@x.io")], SnapshotCounts())
    replace_members(engine, "b", [row("2", "two@x.io")], SnapshotCounts())
    with engine.connect() as conn, WorkList(conn, "a", "nat", needs_email=True) as borrowed:
        assert [c.subject for c in borrowed.page(True, "", 5)] == ["u:1", "u:2"]
        assert conn.in_transaction()  # the caller's to end

    with DestinationWork(engine, "nat", needs_email=True) as work:
        lists = [work.make("a"), work.make("b")]
        assert not work.conn.in_transaction()
        page = lists[0].page(True, "", 5)
        assert [c.subject for c in page] == ["u:1", "u:2"] and not work.conn.in_transaction()
        riders = lists[0].riders(page, ["a", "b"])  # the shared table: b's change of u:2 rides along
        assert [(key, c.subject) for key, c in riders] == [("b", "u:2")] and not work.conn.in_transaction()
        assert lists[1].page(True, "", 5) == []  # taken by a's page
        assert lists[1].leaves_left() == 0 and not work.conn.in_transaction()
    assert work.conn.closed
