"""The state store (the ledger): what each destination has acknowledged, snapshots, runs.

One module per job, in the order a run uses them:

- engine     engines for the state and source databases, migrations, cancelling statements
- tables     the SQLModel tables (the schema Alembic migrates)
- snapshots  stage an audience's fresh members and merge them into `member`
- diff       desired vs acknowledged: PlanCounts and the WorkList a run pages through
- sends      mark in flight, record outcomes (acknowledged moves only after a 2xx), recovery
- runs       run records, retention, and the reads status and the daemon make of them
- lease      one run at a time per state database
- operator   resync marks, failures, history, guard approvals
- backlog    per configured pair: what a run would send now, and since when (status, metrics, alerts)

The names below are the store's public surface, re-exported for callers (tests, bench/)
that want the whole store under one name; syncd's own modules import the job they use.
"""

from syncd.errors import RunInProgress
from syncd.model import RUN_TOTALS
from syncd.state.diff import WORK, PlanCounts, WorkList, new_nonce, plan_counts, still_work
from syncd.state.engine import now, upsert
from syncd.state.lease import LEASE_TTL, LeaseHandle, acquire_lease, release_lease, renew_lease
from syncd.state.operator import (
    FailureGroup,
    approval,
    drop_approval,
    failures,
    mark_resync,
    recent_runs,
    record_approval,
    requeue_failures,
)
from syncd.state.runs import (
    Pruned,
    acked_true_count,
    finish_run,
    last_results,
    last_run,
    last_snapshot_rows,
    last_successes,
    not_ok_since,
    prune,
    record_audience,
    record_result,
    start_run,
)
from syncd.state.sends import (
    Outcome,
    adopt_idents,
    attribute_ensured,
    mark_in_flight,
    record_attribute,
    record_outcomes,
    recover_in_flight,
)
from syncd.state.snapshots import (
    STAGE,
    SnapshotCounts,
    load_scratch,
    member_count,
    replace_members,
    scratch_members,
)
from syncd.state.tables import APPROVAL, ATTRIBUTE, LEASE, RUN, RUN_AUDIENCE, RUN_RESULT, L, M

__all__ = [
    "APPROVAL", "ATTRIBUTE", "LEASE", "LEASE_TTL", "RUN", "RUN_AUDIENCE", "RUN_RESULT", "RUN_TOTALS", "STAGE",
    "WORK", "FailureGroup", "L", "LeaseHandle", "M", "Outcome", "PlanCounts", "Pruned", "RunInProgress",
    "SnapshotCounts", "WorkList", "acked_true_count", "acquire_lease", "adopt_idents", "approval",
    "attribute_ensured", "drop_approval", "failures", "finish_run", "last_results", "last_run",
    "last_snapshot_rows", "last_successes", "load_scratch", "mark_in_flight", "mark_resync", "member_count",
    "new_nonce", "not_ok_since", "now", "plan_counts", "prune", "recent_runs", "record_approval",
    "record_attribute", "record_audience", "record_outcomes", "record_result", "recover_in_flight",
    "release_lease", "renew_lease", "replace_members", "requeue_failures", "scratch_members", "start_run",
    "still_work", "upsert",
]
