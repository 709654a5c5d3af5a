"""What an operator asks beyond the scheduled runs: `resync` and `retry` mark the ledger, then
run those pairs now (the same run as any other, restricted to them); `approve` lets the next
run send the exits the guard holds. The commands only render what these return."""

from __future__ import annotations

import getpass
import logging
import socket
from dataclasses import dataclass, replace

from sqlalchemy import Engine

from syncd import guards
from syncd.config import AudienceConfig, Config
from syncd.errors import RunInProgress
from syncd.guards import GuardVerdict
from syncd.model import PairOutcome
from syncd.render import plural
from syncd.run.pipeline import Options, run_once
from syncd.run.report import RunReport
from syncd.state.diff import plan_counts
from syncd.state.operator import mark_resync, record_approval, requeue_failures

log = logging.getLogger("syncd")


@dataclass(frozen=True)
class TargetedRun:
    """A run of some pairs now, on an operator's request."""

    report: RunReport | None  # None: nothing to run, or another run holds the lease (`busy`)
    busy: str | None = None  # why the run did not start
    requeued: int = 0  # `retry`: rejected changes whose failure marks were cleared


def resync(config: Config, engine: Engine, audience: str, destination: str | None,
           options: Options) -> TargetedRun:
    """Send the pair's full state again: `true` to every member, `false` to every
    non-member the destination holds as `true`; marked in the ledger, then run now."""
    names = [destination] if destination else list(_audience(config, audience).destinations)
    for name in names:
        marked = mark_resync(engine, audience, name)
        earlier = (f"; {plural(marked.earlier_emails, 'contact')} under members' earlier emails keep "
                   "`true` until the user leaves (not resent)" if marked.earlier_emails else "")
        log.info("resync %s at %s: %s marked to be sent again%s", audience, name,
                 plural(marked.users, "acknowledged user"), earlier)
    return _run_now(config, engine, {(audience, name) for name in names},
                    replace(options, summary=resync_lines), "the marks stay: the next run sends them")


def resync_lines(report: RunReport) -> list[str]:
    """A resync's summary, one line per pair: what it sent again, not "entered"/"left"."""
    lines = []
    for p in report.pairs:
        values = f"{p.entered} (true) / {p.left} (false)"
        done = f"resent {values}" if p.outcome == PairOutcome.OK else f"{values} to resend"
        counts = f"{p.acknowledged} acknowledged, {p.skipped} skipped (no email), {p.failed} failed"
        verdict = p.outcome + (f" ({p.message})" if p.message else "")
        lines.append(f"resync {p.audience_key} at {p.destination}: {done}, {counts}, {p.pending} pending: "
                     f"{verdict}")
    return lines


def retry(config: Config, engine: Engine, destination: str | None, options: Options) -> TargetedRun:
    """Clear the failure marks of rejected changes and try them now (a run of those pairs)."""
    requeued = requeue_failures(engine, destination)
    configured = {(a.key, d) for a in config.audiences for d in a.destinations}
    pairs = set(requeued) & configured
    if not pairs:
        return TargetedRun(None)
    total = sum(requeued.values())
    log.info("requeued %s: %s", plural(total, "failed change"),
             ", ".join(f"{k} at {d}: {n}" for (k, d), n in sorted(requeued.items())))
    return replace(_run_now(config, engine, pairs, options, "they stay queued for the next run"),
                   requeued=total)


def _run_now(config: Config, engine: Engine, pairs: set[tuple[str, str]], options: Options,
             if_busy: str) -> TargetedRun:
    try:
        return TargetedRun(run_once(only(config, pairs), replace(options, part=True), engine=engine))
    except RunInProgress as exc:
        log.error("%s; %s", exc, if_busy)
        return TargetedRun(None, busy=str(exc))


def only(config: Config, pairs: set[tuple[str, str]]) -> Config:
    """The config restricted to some (audience, destination) pairs, for a targeted run."""
    audiences = tuple(
        replace(a, destinations=tuple(d for d in a.destinations if (a.key, d) in pairs))
        for a in config.audiences
    )
    return replace(config, audiences=tuple(a for a in audiences if a.destinations))


def approve(config: Config, engine: Engine, audience: str, destination: str | None) -> list[GuardVerdict]:
    """Let the next run send the exits the guard holds (up to their current number), judged
    on the last run's snapshot; per destination, the guard's verdict (`tripped`: approved)."""
    target = _audience(config, audience)
    verdicts = []
    for name in [destination] if destination else target.destinations:
        needs_email = config.destinations[name].needs_email
        with engine.connect() as conn:
            counts = plan_counts(conn, audience, name, needs_email)
            verdict = guards.check(conn, target, config.guards, name, counts.members, counts.left)
        if verdict.tripped:
            record_approval(engine, audience, name, verdict.exits, verdict.acknowledged, _operator())
        verdicts.append(verdict)
    return verdicts


def _audience(config: Config, key: str) -> AudienceConfig:
    return next(a for a in config.audiences if a.key == key)


def _operator() -> str:
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = "?"
    return f"{user}@{socket.gethostname()}"
