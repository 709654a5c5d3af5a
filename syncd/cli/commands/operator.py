"""The operator commands' output: plan, resync, failures, retry, history, approve.

Each renders what one function of run/ or state/ returned as an Output: the data `--json`
prints, the text a person reads, and the exit status. Arguments are checked against the
config (`check_args`) before any database is touched; a mistake there is a UsageError
(exit 2, one line).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from syncd.config import Config
from syncd.errors import UsageError
from syncd.guards import GuardVerdict
from syncd.model import RUN_TOTALS, RunOutcome, ScheduledOutcome
from syncd.render import duration, maybe_iso, plural
from syncd.render import table as render_table
from syncd.run.operator import TargetedRun
from syncd.run.plan import AudiencePlan, DestinationPlan, PairPlan, Plan
from syncd.run.report import RunReport
from syncd.state.operator import FailureGroup, RunSummary


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


# --- plan --------------------------------------------------------------------------------


def plan(result: Plan) -> Output:
    return Output({"snapshot_at": maybe_iso(result.snapshot_at),
                   "audiences": [_plan_audience(a) for a in result.audiences],
                   "destinations": [_plan_destination(d) for d in result.destinations]}, format_plan(result))


def _plan_destination(item: DestinationPlan) -> dict[str, Any]:
    return {
        "destination": item.destination,
        "calls": item.estimate.calls,
        "by_kind": dict(item.estimate.parts),  # id_listing, mass_updates, user_calls, ...
        "rate_limit": item.rate_limit,
        "send_seconds": item.send_seconds,  # None: unpaced
        "runs": item.runs,  # runs of max_send_time the sending spans
        "note": item.estimate.note,
    }


def _plan_audience(item: AudiencePlan) -> dict[str, Any]:
    if item.error is not None:
        return {"audience": item.audience, "error": item.error}
    counts = item.counts
    return {"audience": item.audience, "error": None, "rows": counts.rows, "members": counts.members,
            "skipped_rows": counts.skipped, "destinations": [_plan_pair(p) for p in item.destinations]}


def _plan_pair(pair: PairPlan) -> dict[str, Any]:
    return {
        "destination": pair.destination,
        "entered": pair.entered,
        "left": pair.left,
        "retries": pair.retries,
        "skipped": pair.skipped,
        "samples": pair.samples,
        "sends": pair.sends,
        "calls": pair.calls,  # as if the destination had no other audience
        "rate_limit": pair.rate_limit,
        "send_seconds": pair.send_seconds,  # the calls' time; None: unpaced
        "guard": {**pair.guard.as_dict(), "message": pair.guard_message},
    }


def format_plan(result: Plan) -> str:
    lines = [f"plan for a run at {maybe_iso(result.snapshot_at)} (dry run: nothing sent, nothing recorded)"]
    for item in result.audiences:
        if item.error:
            lines.append(f"{item.audience}: {item.error}")
            continue
        lines.append(f"{item.audience}: {plural(item.counts.members, 'member')} "
                     f"({plural(item.counts.rows, 'row')}, {item.counts.skipped} skipped)")
        for pair in item.destinations:
            lines.append(
                f"  {pair.destination}: {pair.entered} true, {pair.left} false "
                f"({pair.retries} retries), {pair.skipped} skipped (no email); "
                f"{_send_time(pair)}"
            )
            for value, kind, count in (("true", "entered", pair.entered), ("false", "left", pair.left)):
                if pair.samples[kind]:
                    lines.append(f"    {value}: {', '.join(pair.samples[kind])}"
                                 + (", …" if count > len(pair.samples[kind]) else ""))
            if pair.guard.held:
                lines.append(f"    HELD: {pair.guard_message}")
    if result.destinations:
        lines.append("calls per destination (a rate limit counts calls, not changes):")
    for dest in result.destinations:
        lines.append(f"  {dest.destination}: {_calls_time(dest)}")
        if dest.estimate.note and dest.estimate.calls:
            lines.append(f"    {dest.estimate.note}")
    return "\n".join(lines)


def _send_time(pair: PairPlan) -> str:
    if not pair.sends:
        return "nothing to send"
    calls = f" in {plural(pair.calls, 'call')}" if pair.calls != pair.sends else ""
    sends = plural(pair.sends, "send")
    if pair.send_seconds is None:
        return f"{sends}{calls}, unpaced (no rate_limit)"
    return f"{sends}{calls}, about {_hms(pair.send_seconds)} at {pair.rate_limit:g}/s"


def _calls_time(item: DestinationPlan) -> str:
    """'530 calls (15 id listing, ...), about 53s at 10/s', and the runs it spans."""
    if not item.estimate.calls:
        return "nothing to send"
    if item.send_seconds is None:
        return f"{item.estimate.described()}, unpaced (no rate_limit)"
    text = f"{item.estimate.described()}, about {_hms(item.send_seconds)} at {item.rate_limit:g}/s"
    if item.runs > 1:
        text += (f": longer than a run sends ([schedule] max_send_time {_hms(item.send_limit)}), "
                 f"so about {item.runs} runs")
    return text


def _hms(seconds: float) -> str:
    """At least '1s', hours the largest unit: how long a send or a run takes."""
    return duration(max(1, round(seconds)), "hms")


# --- resync and retry: a run of some pairs, now --------------------------------------------


def resync(result: TargetedRun) -> Output:
    """The run's fields at the top level, always (SPEC 3): also when another run held the lease
    (`outcome` "skipped", as the daemon's metrics count it, with the `error`)."""
    if result.report is None:
        return Output({**_no_run(ScheduledOutcome.SKIPPED), "error": result.busy}, "", 1)
    # The run logged its summary (stderr, like run-once): printed again on stdout it showed twice.
    report = result.report
    return Output(_report(report), "" if report.pairs else "nothing to send", report.exit_code)


def retry(result: TargetedRun) -> Output:
    if result.report is None and result.busy is None:  # nothing to retry: no run, all is well
        return Output({"requeued": 0, **_no_run(RunOutcome.OK)}, "no failed changes to retry")
    output = resync(result)
    output.data = {"requeued": result.requeued, **output.data}
    return output


def _no_run(outcome: str) -> dict[str, Any]:
    return {"run_id": None, "outcome": outcome, "pairs": [], "audience_errors": {}}


def _report(report: RunReport) -> dict[str, Any]:
    return {"run_id": report.run_id, "outcome": report.outcome,
            "pairs": [_renamed(asdict(p)) for p in report.pairs], "audience_errors": report.audience_errors}


def _renamed(record: dict[str, Any]) -> dict[str, Any]:
    """A ledger record for --json: every command names the audience key `audience`."""
    return {("audience" if k == "audience_key" else k): v for k, v in record.items()}


# --- failures ----------------------------------------------------------------------------


def failures(groups: list[FailureGroup]) -> Output:
    data = [_renamed(asdict(g)) for g in groups]
    if not groups:
        return Output(data, "no failed changes")
    lines = [f"{plural(sum(g.count for g in groups), 'failed change')}; each is tried again every run "
             "(`syncd retry` to try now)"]
    for g in groups:
        more = ", …" if g.count > len(g.samples) else ""
        lines.append(f"{g.destination} / {g.audience_key}: {g.count} rejected: {g.reason}; "
                     f"e.g. {', '.join(g.samples)}{more}")
    return Output(data, "\n".join(lines))


# --- history -----------------------------------------------------------------------------

HISTORY_COLUMNS = ("run", "started", "duration", "outcome", *RUN_TOTALS, "held")


def history(runs: list[RunSummary]) -> Output:
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


def approve(verdicts: list[GuardVerdict]) -> Output:
    data, lines = [], []
    for v in verdicts:
        if v.tripped:
            lines.append(f"approved: the next run sends {plural(v.exits, 'exit')} of {v.audience_key} at "
                         f"{v.destination} ({v.reason()})")
        else:
            lines.append(f"nothing held for {v.audience_key} at {v.destination}: {plural(v.exits, 'exit')} "
                         f"of {plural(v.acknowledged, 'acknowledged member')} "
                         f"{'is' if v.exits == 1 else 'are'} within the guard")
        data.append({"audience": v.audience_key, "destination": v.destination, "approved": v.tripped,
                     **v.as_dict()})
    return Output(data, "\n".join(lines))
