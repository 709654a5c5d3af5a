"""Recording sends on real SQLite and PostgreSQL: mark_in_flight and record_outcomes write
every column of every row as a page's mixed outcomes say (new and existing rows, several
idents of one subject, acknowledged true and false, rejected, transient, uncertain and
untried changes), in pages larger than one statement's share of rows, and nothing else."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, insert, select

from syncd.model import Change
from syncd.state.sends import Outcome, mark_in_flight, record_outcomes
from syncd.state.tables import L

KEY, DEST = "buyers", "nat"
EARLIER = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)
FRESH = {"acked": None, "seq": 0, "acked_at": None, "maybe_true": False, "maybe_false": False,
         "attempts": 0, "failed": False, "last_status": None, "last_error": None}


def change(subject: str, value: bool, ident: str = "", seq: int = 0, nonce: str = "n-new") -> Change:
    user_id = subject.removeprefix("u:")
    return Change(subject=subject, user_id=user_id, anonymous_id=None, email=ident or f"{user_id}@x.io",
                  seq=seq, value=value, ident=ident, nonce=nonce)


def existing(engine: Engine, subject: str, ident: str = "", **columns: Any) -> None:
    """A ledger row from earlier runs (another key or destination when given)."""
    row = {"audience_key": KEY, "destination": DEST, "subject": subject, "ident": ident, "nonce": "n-old",
           "user_id": "old", "email": "old@x.io", **FRESH, "seq": 4, "acked": True,
           "acked_at": EARLIER, **columns}
    with engine.begin() as conn:
        conn.execute(insert(L), row)


def ledger(engine: Engine) -> dict[tuple[str, str, str, str], dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(select(L)).mappings()
        return {(r["audience_key"], r["destination"], r["subject"], r["ident"]):
                {k: v for k, v in r.items() if k not in ("audience_key", "destination", "subject", "ident")}
                for r in rows}


def test_a_mixed_page_writes_every_column_as_before(engine: Engine) -> None:
    # Earlier runs: a member acknowledged at one email and tried before at another, a change
    # pending since EARLIER, a timed-out `true`, and rows of other pairs that must not move.
    existing(engine, "u:both", "a@x.io")
    existing(engine, "u:both", "b@x.io", acked=False, maybe_true=True, pending=False, pending_since=EARLIER,
             attempts=2, failed=True, last_status=500, last_error="down")
    existing(engine, "u:retry", "", acked=False, pending=True, pending_since=EARLIER, attempts=2,
             failed=True, last_status=400, last_error="bad", seq=1)
    existing(engine, "u:timeout", "", acked=None, seq=0, acked_at=None, maybe_true=True, attempts=1)
    existing(engine, "u:both", "a@x.io", audience_key="other")
    existing(engine, "u:both", "a@x.io", destination="usercom")
    bulk = [change(f"u:{n:04d}", True) for n in range(300)]  # new rows: more than one statement's worth
    page = [change("u:both", False, "a@x.io", seq=4), change("u:both", False, "b@x.io", seq=4),
            change("u:retry", True, seq=1), change("u:timeout", False), change("u:rejected", True),
            change("u:gone", False, "g@x.io"), change("u:later", True), *bulk]

    before = datetime.now(UTC)
    mark_in_flight(engine, KEY, DEST, page)
    after = datetime.now(UTC)
    marked = ledger(engine)
    for c in page:
        row = marked[(KEY, DEST, c.subject, c.ident)]
        assert (row["pending"], row["in_flight"], row["seq"], row["user_id"], row["email"]) == (
            c.value, c.value, c.seq, c.user_id, c.email), c
        assert row["nonce"] == ("n-old" if c.subject in ("u:both", "u:retry", "u:timeout") else "n-new"), c
        assert row["anonymous_id"] is None
        if (c.subject, c.ident) in (("u:retry", ""), ("u:both", "b@x.io")):
            assert row["pending_since"] == EARLIER  # pending since its first try, not this one
        else:
            assert before - timedelta(seconds=1) <= row["pending_since"] <= after + timedelta(seconds=1)
    assert marked[(KEY, DEST, "u:0007", "")] | {"pending_since": None} == {
        **FRESH, "nonce": "n-new", "user_id": "0007", "anonymous_id": None, "email": "0007@x.io",
        "pending": True, "in_flight": True, "pending_since": None}

    long_error = "503 " + "é" * 600
    outcomes = [
        Outcome("u:both", False, acked=True, ident="a@x.io", attempts=1, status=200),
        Outcome("u:both", False, acked=True, ident="b@x.io", attempts=1, status=200),
        Outcome("u:retry", True, ident="", attempts=3, status=503, error=long_error),  # transient
        Outcome("u:timeout", False, ident="", attempts=1, uncertain=True, error="timed out"),
        Outcome("u:rejected", True, ident="", attempts=1, rejected=True, status=422, error="no"),
        Outcome("u:gone", False, ident="g@x.io", attempts=1, uncertain=True, rejected=True, status=None,
                error=""),
        Outcome("u:later", True, ident=""),  # untried: the destination was set aside
        *(Outcome(c.subject, True, acked=True, attempts=1, status=200) for c in bulk),
    ]
    before = datetime.now(UTC)
    record_outcomes(engine, KEY, DEST, outcomes)
    after = datetime.now(UTC)
    rows = ledger(engine)

    acked = {"pending": None, "in_flight": None, "maybe_true": False, "maybe_false": False, "attempts": 0,
             "failed": False, "last_status": None, "last_error": None, "pending_since": None}
    for subject, ident, value, seq in [("u:both", "a@x.io", False, 5), ("u:both", "b@x.io", False, 5),
                                       ("u:0000", "", True, 1), ("u:0299", "", True, 1)]:
        row, was = dict(rows[(KEY, DEST, subject, ident)]), dict(marked[(KEY, DEST, subject, ident)])
        assert before - timedelta(seconds=1) <= row.pop("acked_at") <= after + timedelta(seconds=1)
        was.pop("acked_at")
        assert row == {**was, **acked, "acked": value, "seq": seq}, subject  # the nonce and the user kept
    assert sum(1 for (k, d, _, _), r in rows.items() if (k, d) == (KEY, DEST) and r["acked"] is True
               and r["seq"] == 1) == len(bulk)

    def unacked(subject: str, ident: str = "", **changed: Any) -> None:
        was = marked[(KEY, DEST, subject, ident)]
        assert rows[(KEY, DEST, subject, ident)] == {**was, "in_flight": None, **changed}, subject

    unacked("u:retry", attempts=5, failed=False, last_status=503, last_error=long_error[:500])
    unacked("u:timeout", attempts=2, maybe_false=True, last_error="timed out")  # maybe_true kept
    unacked("u:rejected", attempts=1, failed=True, last_status=422, last_error="no")
    unacked("u:gone", "g@x.io", attempts=1, failed=True, maybe_false=True)  # "" error stored as NULL
    unacked("u:later")
    for other in [("other", DEST, "u:both", "a@x.io"), (KEY, "usercom", "u:both", "a@x.io")]:
        assert rows[other] | {"acked_at": None} == {
            **FRESH, "seq": 4, "acked": True, "nonce": "n-old", "user_id": "old", "anonymous_id": None,
            "email": "old@x.io", "pending": None, "in_flight": None, "pending_since": None}
        assert rows[other]["acked_at"] == EARLIER


def test_a_change_given_twice_is_marked_once_as_the_last(engine: Engine) -> None:
    mark_in_flight(engine, KEY, DEST, [change("u:1", True, seq=0), change("u:1", False, seq=1)])
    row = ledger(engine)[(KEY, DEST, "u:1", "")]
    assert (row["pending"], row["in_flight"], row["seq"]) == (False, False, 1)
