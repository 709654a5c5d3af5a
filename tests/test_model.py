"""The counters and outcomes every layer shares (syncd/model.py) stay in step with the places
that spell them out: the report, the run_result table, the metrics."""

from __future__ import annotations

from dataclasses import fields

from syncd.daemon.metrics import RUN_OUTCOMES
from syncd.model import PAIR_COUNTERS, RUN_TOTALS, PairOutcome, RunOutcome, ScheduledOutcome
from syncd.run.report import PairReport
from syncd.state.tables import RUN_RESULT


def test_the_pair_counters_are_the_reports_and_the_tables() -> None:
    report_fields = [f.name for f in fields(PairReport)]
    assert report_fields == ["audience_key", "destination", *PAIR_COUNTERS, "outcome", "message"]
    columns = [c.name for c in RUN_RESULT.columns]
    assert columns == ["run_id", "audience_key", "destination", *PAIR_COUNTERS, "outcome", "message"]
    assert PAIR_COUNTERS[1:] == RUN_TOTALS


def test_outcomes_are_their_values_everywhere() -> None:
    assert f"{RunOutcome.OK}" == str(RunOutcome.OK) == "ok"
    assert [str(o) for o in PairOutcome] == ["ok", "undelivered", "stopped", "held", "source_failed"]
    # Every way a scheduled run can end has a metrics series, ok first.
    assert list(RUN_OUTCOMES) == ["ok", "held", "undelivered", "interrupted", *ScheduledOutcome]
