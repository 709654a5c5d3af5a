"""What a run did: the RunReport (with one model.PairReport per (audience, destination)), and
the summary lines a run ends with."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from syncd.model import PairOutcome, PairReport, RunOutcome
from syncd.render import plural
from syncd.state.readings import Reading
from syncd.state.snapshots import SnapshotCounts


@dataclass
class RunReport:
    run_id: int
    snapshot_at: datetime
    audiences: dict[str, SnapshotCounts] = field(default_factory=dict)
    audience_errors: dict[str, str] = field(default_factory=dict)
    pairs: list[PairReport] = field(default_factory=list)
    interrupted: bool = False
    out_of_time: bool = False  # sending stopped at [schedule] max_send_time with changes left
    calls: dict[str, int] = field(default_factory=dict)  # per destination: calls sent (one per user)
    # (audience, destination) -> why the pair's setup conflicts with the destination's (an
    # attribute of another type): it sends nothing until a person fixes it.
    conflicts: dict[tuple[str, str], str] = field(default_factory=dict)
    # The state as read after the run, when the alerts judged it: the daemon's metrics show it too.
    reading: Reading | None = None

    @property
    def delivered(self) -> bool:
        return not self.audience_errors and not self.interrupted and all(
            p.outcome == PairOutcome.OK for p in self.pairs
        )

    @property
    def outcome(self) -> RunOutcome:
        if self.interrupted:
            return RunOutcome.INTERRUPTED
        if self.delivered:
            return RunOutcome.OK
        held_only = not self.audience_errors and all(
            p.outcome in (PairOutcome.OK, PairOutcome.HELD) for p in self.pairs
        )
        return RunOutcome.HELD if held_only else RunOutcome.UNDELIVERED

    @property
    def exit_code(self) -> int:
        return 0 if self.delivered else 1


def summary_lines(report: RunReport) -> list[str]:
    """One human line per destination, then one per audience that failed."""
    lines = []
    by_destination: dict[str, list[PairReport]] = {}
    for pair in report.pairs:
        by_destination.setdefault(pair.destination, []).append(pair)
    for name, pairs in by_destination.items():
        def total(attr: str, pairs: list[PairReport] = pairs) -> int:
            return sum(int(getattr(p, attr)) for p in pairs)
        bad = [p for p in pairs if p.outcome != PairOutcome.OK]
        verdict = "ok" if not bad else "; ".join(
            f"{p.audience_key}: {p.outcome}" + (f" ({p.message})" if p.message else "") for p in bad
        )
        lines.append(
            f"{name}: {plural(len(pairs), 'audience')}, {total('entered')} entered, {total('left')} left, "
            f"{plural(total('sent'), 'change')} in {plural(report.calls.get(name, 0), 'call')}, "
            f"{total('acknowledged')} acknowledged, "
            f"{total('skipped')} skipped (no email), {total('failed')} failed, "
            f"{total('pending')} pending: {verdict}"
        )
    return lines
