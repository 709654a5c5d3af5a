"""The state store (the ledger): what each destination has acknowledged, snapshots, runs.
All of syncd's SQL on the state database lives in this package.

One module per job, in the order a run uses them:

- engine     engines for the state and source databases, migrations, cancelling statements
- tables     the SQLModel tables (the schema Alembic migrates)
- snapshots  stage an audience's fresh members and merge them into `member` (or plan's scratch copy)
- diff       desired vs acknowledged: PlanCounts and the WorkList a run pages through
- sends      mark in flight, record outcomes (acknowledged moves only after a 2xx), recovery
- remote_ids a destination's own id per user (User.com), learned from its answers
- runs       run records, retention, and the reads of them
- lease      one run at a time per state database
- operator   resync marks, failures, history, guard approvals
- readings   the one read model: per configured pair, everything status shows, and the recent runs
- alerts     what the alert webhook was told, and who is telling it now

The commit rule: **a function that takes an Engine is one transaction and commits it; a
function that takes a Connection never commits** (its caller's transaction is the caller's
to end). So a caller can always tell from a signature whether something is written for good
when the call returns, and several connection-taking calls compose into one transaction.
(A run's work lists live on a connection that `diff.DestinationWork`, given the engine, owns
and commits step by step, so no transaction stays open while changes are sent.)

Callers import each name from the module that owns it.
"""
