"""The words every layer shares: a snapshot row, a change (enter or leave) for one destination,
the outcomes of runs and pairs, the per-pair counters and report, and the Progress interface a run
reports long work through.

Which changes exist is decided in SQL (state/diff.py: desired vs acknowledged); this
module holds the pure parts: identities, and the deterministic messageId. Outcomes are
StrEnums: they are their values in JSON, the state database and the metrics' labels.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, NamedTuple, Protocol


def subject_of(user_id: str | None, anonymous_id: str | None) -> str | None:
    """The ledger's identity: user_id when there is one, else anonymous_id."""
    if user_id:
        return f"u:{user_id}"
    if anonymous_id:
        return f"a:{anonymous_id}"
    return None


def who(subject: str) -> str:
    """A subject as a person reads it: 'user u_123', 'anonymous id 7f3a' (never the ledger's
    internal 'u:'/'a:' prefix)."""
    kind, _, value = subject.partition(":")
    return f"anonymous id {value}" if kind == "a" else f"user {value}"


class SnapshotRow(NamedTuple):
    """One member of a snapshot, in the staging table's column order: the bulk loaders take
    these tuples as they are (millions of them: no per-row object beyond the tuple)."""

    subject: str  # subject_of(user_id, anonymous_id)
    user_id: str | None
    anonymous_id: str | None
    email: str | None
    url: str | None
    traits: str | None  # JSON of the extra columns (sorted keys); None without any

    @classmethod
    def of(cls, user_id: str | None, anonymous_id: str | None = None, email: str | None = None,
           url: str | None = None, traits: dict[str, Any] | None = None) -> SnapshotRow:
        subject = subject_of(user_id, anonymous_id)
        assert subject is not None, "a SnapshotRow always has an identifier"
        return cls(subject, user_id, anonymous_id, email, url, traits_json(traits) if traits else None)


def traits_json(traits: dict[str, Any]) -> str:
    return json.dumps(traits, sort_keys=True, default=str)


@dataclass(frozen=True)
class Change:
    """One Identify to send: `value` is the audience trait's new value."""

    subject: str
    user_id: str | None
    anonymous_id: str | None
    email: str | None
    seq: int  # acknowledged changes so far for this subject (and ident) at this destination
    value: bool
    url: str | None = None
    traits: dict[str, Any] = field(default_factory=dict)
    ident: str = ""  # the ledger row's destination-side key: the email at Nat, else ""
    nonce: str = ""  # the ledger row's random token, made when the row was created

    @property
    def cursor(self) -> tuple[str, str]:
        """Where a page of changes ends (WorkList.page's `after`)."""
        return self.subject, self.ident

    def message_id(self, audience_key: str, destination: str) -> str:
        """Same change, same id on every retry; the next change gets a new one. The ledger
        row's ident and nonce make ids unique for the life of a destination: another email
        of the same user, or the row created again after retention deleted it, never
        repeats an id. (Rows from before the nonce keep the material they had.)"""
        parts = [audience_key, destination, self.subject, str(self.seq), "1" if self.value else "0"]
        if self.nonce:
            parts += [self.ident, self.nonce]
        return digest_id(parts)


def call_message_id(change_ids: Sequence[str]) -> str:
    """The messageId of one call: a single change's own id (as before calls carried several);
    for several, one derived from their sorted ids, so the same set is the same id on every
    retry and never the id of any one change."""
    if len(change_ids) == 1:
        return change_ids[0]
    return digest_id(["call", *sorted(change_ids)])


def digest_id(parts: Sequence[str]) -> str:
    """A messageId from its material: the same parts, the same id."""
    return "syncd-" + hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def Enter(**kwargs: Any) -> Change:
    return Change(value=True, **kwargs)


def Leave(**kwargs: Any) -> Change:
    return Change(value=False, **kwargs)


class RunOutcome(StrEnum):
    """How a run ended (run.outcome, `syncd history`, the metrics, the alerts)."""

    RUNNING = "running"  # not finished (yet)
    OK = "ok"  # everything delivered
    HELD = "held"  # delivered but for exits a guard holds for approval
    UNDELIVERED = "undelivered"  # changes wait for the next run (or an audience's query failed)
    INTERRUPTED = "interrupted"  # stopped by a signal or a lost lease
    CRASHED = "crashed"  # still "running" when a later run finished: the process died


class PairOutcome(StrEnum):
    """How one (audience, destination) pair ended in a run (run_result.outcome)."""

    OK = "ok"
    UNDELIVERED = "undelivered"
    STOPPED = "stopped"  # the destination refused the key (401/403): its sender stopped
    HELD = "held"
    SOURCE_FAILED = "source_failed"  # the audience's query failed: nothing was sent


class ScheduledOutcome(StrEnum):
    """A scheduled run that produced no report (the daemon's metrics count these too)."""

    SKIPPED = "skipped"  # another process held the run lease
    ERROR = "error"  # the run raised: see the journal


@dataclass(frozen=True)
class Totals:
    """What a pair did in a run, and what `history` sums over a run's pairs."""

    entered: int  # changes to `true`
    left: int  # changes to `false`
    sent: int  # changes sent at least once
    acknowledged: int  # 2xx answers
    skipped: int  # members without the email the destination needs
    failed: int  # changes the destination refused
    pending: int  # changes left for the next run


# The per-pair counters, in PairReport's and run_result's order (tests/test_model.py keeps
# them in step): the members at the snapshot, then the Totals (a member count summed over
# pairs means nothing, so `history` leaves it out).
RUN_TOTALS = tuple(f.name for f in fields(Totals))
PAIR_COUNTERS = ("members", *RUN_TOTALS)


@dataclass
class PairReport:
    """One (audience, destination) pair in one run: delivery fills it in, the run records it."""

    audience_key: str
    destination: str
    members: int = 0
    entered: int = 0
    left: int = 0
    sent: int = 0
    acknowledged: int = 0
    skipped: int = 0
    failed: int = 0
    pending: int = 0
    outcome: PairOutcome = PairOutcome.OK
    message: str | None = None


# --- progress: what a run reports long work through (cli/progress.py draws it) ----------


class Task(Protocol):
    def advance(self, n: int = 1) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Pace:
    """How a task's ETA is worked out where its work is paced: at most `rate` per second (a
    destination's rate limit, shared by all its audiences; None: unpaced, the average so far
    alone), and nothing new starts after `stops_at` (time.monotonic(): the run's send time
    limit, max_send_time). `eta` False: no ETA of its own (an audience's deliveries: its
    destination's calls show the ETA, counted in calls, not changes)."""

    rate: float | None = None
    stops_at: float | None = None
    eta: bool = True


class Progress(Protocol):
    def task(self, label: str, total: int | None, unit: str, pace: Pace | None = None) -> Task: ...


class Null:
    """No output."""

    def task(self, label: str, total: int | None, unit: str, pace: Pace | None = None) -> Task:
        return _NullTask()


class _NullTask:
    def advance(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass
