"""One destination's sending in one run, as its jobs share it: pairs.py pages each pair's
work list, calls.py sends grouped calls, bulk.py mass updates. The Session holds what they
have in common (the destination, its sender, each pair's state, the calls made, the ids
learned) and turns answers into each change's outcome, recorded for its own pair: marked in
flight before a request leaves, recorded after (the acknowledged value moves only on a 2xx)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from sqlalchemy import Engine

from syncd.delivery.destinations import Destination
from syncd.delivery.sender import Sender
from syncd.delivery.wire import Request, Result, Verdict
from syncd.guards import GuardVerdict
from syncd.model import Change, PairReport, Task, who
from syncd.state.diff import WorkList
from syncd.state.remote_ids import learn_ids
from syncd.state.sends import Outcome, mark_in_flight, record_outcomes

T = TypeVar("T")


@dataclass
class Pair:
    """One (audience, destination) pair of a run: its work list, guard, report, progress."""

    work: WorkList
    guard: GuardVerdict
    report: PairReport
    task: Task | None = None
    ready: bool = False  # set up at the destination: its changes may be sent

    @property
    def key(self) -> str:
        return self.work.audience_key

    @property
    def total(self) -> int:
        """The pair's changes (at Nat a leaving user may have several: one per email)."""
        return self.work.counts.changes


class Session:
    def __init__(self, destination: Destination, sender: Sender, engine: Engine,
                 snapshot_at: datetime) -> None:
        self.destination, self.sender, self.engine = destination, sender, engine
        self.name, self.snapshot_at = destination.name, snapshot_at
        self.pairs: dict[str, Pair] = {}
        self.calls = 0  # calls sent (each carries one or more changes; a mass update many)
        self.learned: dict[str, int] = {}  # subject -> the destination's id, not yet stored

    async def call(self, request: Request) -> Result:
        """One request through the sender, counted as a call if it left."""
        result = await self.sender.call(request)
        self.calls += result.attempts > 0
        return result

    def mark(self, key: str, changes: Sequence[Change]) -> None:
        mark_in_flight(self.engine, key, self.name, changes)

    def record(self, key: str, outcomes: Sequence[Outcome]) -> None:
        record_outcomes(self.engine, key, self.name, outcomes)
        _tally(self.pairs[key].report, outcomes)

    def advance(self, key: str, n: int = 1) -> None:
        task = self.pairs[key].task
        if task is not None:
            task.advance(n)

    def learn(self, subject: str, result: Result) -> None:
        """Keep the destination's id for the user from its answer (stored with the next page)."""
        remote_id = self.destination.remote_id(result.body) if result.verdict is Verdict.ACK else None
        if remote_id is not None:
            self.learned[subject] = remote_id

    def store_ids(self) -> None:
        learned, self.learned = self.learned, {}
        learn_ids(self.engine, self.name, learned)


def outcome_of(change: Change, result: Result) -> Outcome:
    """A change's outcome from the answer to the request that carried it."""
    return Outcome(
        subject=change.subject, value=change.value, ident=change.ident,
        acked=result.verdict is Verdict.ACK,
        attempts=result.attempts, rejected=result.verdict is Verdict.REJECT,
        uncertain=result.uncertain, status=result.status, error=result.error,
    )


def by_audience(items: Iterable[tuple[str, T]]) -> dict[str, list[T]]:
    grouped: dict[str, list[T]] = {}
    for key, item in items:
        grouped.setdefault(key, []).append(item)
    return grouped


def _tally(pair: PairReport, outcomes: Sequence[Outcome]) -> None:
    for outcome in outcomes:
        pair.sent += outcome.attempts > 0
        pair.acknowledged += outcome.acked
        pair.failed += outcome.rejected
        if not outcome.acked and outcome.error and pair.message is None:
            pair.message = f"{who(outcome.subject)}: {outcome.error}" if outcome.rejected else outcome.error
