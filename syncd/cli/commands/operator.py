"""The operator commands: plan, resync, failures, retry, history, approve.

Each returns an Output: the data `--json` prints, the text a person reads, and the
exit status. Arguments are checked against the config (`check_args`) before any
database is touched; a mistake there is a UsageError (exit 2, one line).
"""

from __future__ import annotations

import getpass
import logging
import socket
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy import Connection, Engine, Table

from syncd import guards
from syncd.config import AudienceConfig, Config
from syncd.errors import RunInProgress, UsageError
from syncd.model import RUN_TOTALS, PairOutcome
from syncd.render import duration, maybe_iso
from syncd.render import table as render_table
from syncd.run.pipeline import Options, run_once
from syncd.run.report import RunReport
from syncd.source import take_snapshot
from syncd.state import operator as state_operator
from syncd.state.diff import WorkList, plan_counts
from syncd.state.engine import now
from syncd.state.operator import mark_resync, recent_runs, record_approval, requeue_failures
from syncd.state.snapshots import SnapshotCounts, load_scratch, scratch_members

log = logging.getLogger("syncd")

SAMPLES = 5


@dataclass
class Output:
    data: Any  # what --json prints
    text: str  # what a person reads (on stdout; nothing if empty)
    exit_code: int = 0


def check_args(config: Config, audience: str | None = None, destination: str | None = None) -> None:
    """Unknown audience or destination names, before any database is touched."""
    known = {a.key: a for a in config.audiences}
    if audience is not None and audience not in known:
        raise UsageError(f"unknown audience {audience!r} (audience keys: {', '.join(sorted(known))})")
    if destination is not None and destination not in config.destinations:
        raise UsageError(f"unknown destination {destination!r} "
                         f"(destinations: {', '.join(sorted(config.destinations))})")
    if audience is not None and destination is not None and destination not in known[audience].destinations:
        raise UsageError(f"audience {audience!r} is not sent to {destination!r} "
                         f"(its destinations: {', '.join(known[audience].destinations)})")


def _audience(config: Config, key: str) -> AudienceConfig:
    return next(a for a in config.audiences if a.key == key)


def _needs_email(config: Config, destination: str) -> bool:
    return config.destinations[destination].needs_email


def only(config: Config, pairs: set[tuple[str, str]]) -> Config:
    """The config restricted to some (audience, destination) pairs, for a targeted run."""
    audiences = tuple(
        replace(a, destinations=tuple(d for d in a.destinations if (a.key, d) in pairs))
        for a in config.audiences
    )
    return replace(config, audiences=tuple(a for a in audiences if a.destinations))


# --- plan --------------------------------------------------------------------------------


def plan(config: Config, engine: Engine) -> Output:
    """A dry run: a fresh snapshot into a temporary table, compared with the ledger.

    Nothing is sent and nothing in the state database changes; no lease is needed,
    and a run going on at the same time is neither blocked nor disturbed.
    """
    snapshot_at = now()
    with engine.connect() as conn, scratch_members(conn) as scratch:
        audiences = [_plan_audience(config, conn, scratch, a, snapshot_at) for a in config.audiences]
    data = {"snapshot_at": maybe_iso(snapshot_at), "audiences": audiences}
    return Output(data, format_plan(data))


def _plan_audience(config: Config, conn: Connection, scratch: Table, audience: AudienceConfig,
                   snapshot_at: datetime) -> dict[str, Any]:
    counts = SnapshotCounts()
    result: dict[str, Any] = {"audience": audience.key, "error": None}
    # The run's snapshot step, loading a scratch table instead of `member`.
    result["error"] = take_snapshot(config, audience, snapshot_at, counts,
                                    partial(load_scratch, conn, scratch, audience.key, counts=counts))
    if result["error"] is not None:
        return result
    result.update(rows=counts.rows, members=counts.members, skipped_rows=counts.skipped,
                  destinations=[_plan_pair(config, conn, scratch, audience, name)
                                for name in audience.destinations])
    return result


def _plan_pair(config: Config, conn: Connection, scratch: Table, audience: AudienceConfig,
               name: str) -> dict[str, Any]:
    key, rate = audience.key, config.destinations[name].rate_limit
    # The same work list a run makes, from the scratch snapshot instead of `member`.
    with WorkList(conn, key, name, _needs_email(config, name), scratch) as work:
        counts = work.counts
        guard = guards.check(conn, audience, config.guards, name, counts.members, counts.left)
        samples = {label: [_who(c) for c in work.page(value, "", SAMPLES)]
                   for label, value in (("entered", True), ("left", False))}
    sends = counts.entered + (0 if guard.held else counts.left)
    return {
        "destination": name,
        "entered": counts.entered,
        "left": counts.left,
        "retries": counts.retries,
        "skipped": counts.skipped,
        "samples": samples,
        "sends": sends,
        "rate_limit": rate,
        "send_seconds": round(sends / rate, 1) if rate else None,  # None: unpaced
        "guard": {**guard.as_dict(), "message": guard.hold_message(config.path) if guard.held else None},
    }


def _who(change: Any) -> str:
    return str(change.user_id or change.anonymous_id)


def format_plan(data: dict[str, Any]) -> str:
    lines = [f"plan for a run at {data['snapshot_at']} (dry run: nothing sent, nothing recorded)"]
    for item in data["audiences"]:
        if item["error"]:
            lines.append(f"{item['audience']}: {item['error']}")
            continue
        lines.append(f"{item['audience']}: {item['members']} members "
                     f"({item['rows']} rows, {item['skipped_rows']} skipped)")
        for pair in item["destinations"]:
            lines.append(
                f"  {pair['destination']}: {pair['entered']} true, {pair['left']} false "
                f"({pair['retries']} retries), {pair['skipped']} skipped (no email); "
                f"{_send_time(pair)}"
            )
            for value, kind in (("true", "entered"), ("false", "left")):
                if pair["samples"][kind]:
                    lines.append(f"    {value}: {', '.join(pair['samples'][kind])}"
                                 + (", …" if pair[kind] > len(pair["samples"][kind]) else ""))
            if pair["guard"]["held"]:
                lines.append(f"    HELD: {pair['guard']['message']}")
    return "\n".join(lines)


def _send_time(pair: dict[str, Any]) -> str:
    if not pair["sends"]:
        return "nothing to send"
    if pair["send_seconds"] is None:
        return f"{pair['sends']} sends, unpaced (no rate_limit)"
    return f"{pair['sends']} sends, about {_hms(pair['send_seconds'])} at {pair['rate_limit']:g}/s"


def _hms(seconds: float) -> str:
    """At least '1s', hours the largest unit: how long a send or a run takes."""
    return duration(max(1, round(seconds)), "hms")



# --- resync and retry: mark the ledger, then run the pairs now ----------------------------


def resync(config: Config, engine: Engine, audience: str, destination: str | None,
           options: Options) -> Output:
    """Send the pair's full state again: `true` to every member, `false` to every
    non-member the destination holds as `true`; marked in the ledger, then run now."""
    names = [destination] if destination else list(_audience(config, audience).destinations)
    marked = {name: mark_resync(engine, audience, name) for name in names}
    for name, count in marked.items():
        log.info("resync %s at %s: %d acknowledged users marked to be sent again", audience, name, count)
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


def failures(config: Config, engine: Engine, destination: str | None) -> Output:
    with engine.connect() as conn:
        groups = state_operator.failures(conn, destination, SAMPLES)
    data = [_renamed(asdict(g)) for g in groups]
    if not groups:
        return Output(data, "no failed changes")
    lines = [f"{sum(g.count for g in groups)} failed change(s); each is tried again every run "
             "(`syncd retry` to try now)"]
    for g in groups:
        more = ", …" if g.count > len(g.samples) else ""
        lines.append(f"{g.destination} / {g.audience_key}: {g.count} rejected: {g.reason}; "
                     f"e.g. {', '.join(g.samples)}{more}")
    return Output(data, "\n".join(lines))


def retry(config: Config, engine: Engine, destination: str | None, options: Options) -> Output:
    """Clear the failure marks of rejected changes and try them now (a run of those pairs)."""
    requeued = requeue_failures(engine, destination)
    configured = {(a.key, d) for a in config.audiences for d in a.destinations}
    pairs = set(requeued) & configured
    if not pairs:
        return Output({"requeued": 0, "run_id": None}, "no failed changes to retry")
    total = sum(requeued.values())
    log.info("requeued %d failed change(s): %s", total,
             ", ".join(f"{k} at {d}: {n}" for (k, d), n in sorted(requeued.items())))
    output = _run_now(config, engine, pairs, options, "they stay queued for the next run")
    output.data = {"requeued": total, **output.data}
    return output


def _run_now(config: Config, engine: Engine, pairs: set[tuple[str, str]], options: Options,
             if_busy: str) -> Output:
    try:
        report = run_once(only(config, pairs), options, engine=engine)
    except RunInProgress as exc:
        log.error("%s; %s", exc, if_busy)
        return Output({"run_id": None, "error": str(exc)}, "", 1)
    # The run logged its summary (stderr, like run-once): printed again on stdout it showed twice.
    return Output(_report(report), "" if report.pairs else "nothing to send", report.exit_code)


def _report(report: RunReport) -> dict[str, Any]:
    return {"run_id": report.run_id, "outcome": report.outcome,
            "pairs": [_renamed(asdict(p)) for p in report.pairs], "audience_errors": report.audience_errors}


def _renamed(record: dict[str, Any]) -> dict[str, Any]:
    """A ledger record for --json: every command names the audience key `audience`."""
    return {("audience" if k == "audience_key" else k): v for k, v in record.items()}


# --- history -----------------------------------------------------------------------------

HISTORY_COLUMNS = ("run", "started", "duration", "outcome", *RUN_TOTALS, "held")


def history(engine: Engine, limit: int) -> Output:
    with engine.connect() as conn:
        runs = recent_runs(conn, limit)
    data: list[dict[str, Any]] = [{
        "run_id": r.id, "started_at": maybe_iso(r.started_at), "finished_at": maybe_iso(r.finished_at),
        "duration_seconds": (r.finished_at - r.started_at).total_seconds() if r.finished_at else None,
        "outcome": r.outcome, "host": r.host, "pid": r.pid,
        **{name: int(getattr(r, name)) for name in (*RUN_TOTALS, "held", "source_errors")},
    } for r in runs]
    if not data:
        return Output(data, "no runs yet")
    table = [list(HISTORY_COLUMNS)] + [[
        str(d["run_id"]), str(d["started_at"]),
        _hms(d["duration_seconds"]) if d["duration_seconds"] is not None else "-",
        d["outcome"], *(str(d[name]) for name in (*RUN_TOTALS, "held")),
    ] for d in data]
    return Output(data, render_table(table))



# --- approve -----------------------------------------------------------------------------


def approve(config: Config, engine: Engine, audience: str, destination: str | None) -> Output:
    """Let the next run send the exits the guard holds (up to their current number)."""
    target = _audience(config, audience)
    data, lines = [], []
    for name in [destination] if destination else target.destinations:
        with engine.connect() as conn:  # the last run's snapshot: what it held
            counts = plan_counts(conn, audience, name, _needs_email(config, name))
            verdict = guards.check(conn, target, config.guards, name, counts.members, counts.left)
        if verdict.tripped:
            record_approval(engine, audience, name, verdict.exits, verdict.acknowledged, _operator())
            lines.append(f"approved: the next run sends {verdict.exits} exits of {audience} at {name} "
                         f"({verdict.reason()})")
        else:
            lines.append(f"nothing held for {audience} at {name}: {verdict.exits} exits of "
                         f"{verdict.acknowledged} acknowledged members are within the guard")
        data.append({"audience": audience, "destination": name, "approved": verdict.tripped,
                     **verdict.as_dict()})
    return Output(data, "\n".join(lines))


def _operator() -> str:
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = "?"
    return f"{user}@{socket.gethostname()}"
