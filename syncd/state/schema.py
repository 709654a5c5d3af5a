"""Which schema the state database has, and who may change it (SPEC 3, "The schema").

The sending commands (`run`, `run-once`, `resync`, `retry`) create or upgrade the schema
when `[state] auto_migrate` is true; the read-only ones never change an existing schema,
so an older syncd sharing the ledger keeps working until an operator runs `syncd migrate`.
A brand-new database (no syncd schema at all) is created by whichever command meets it
first, unless auto_migrate is false: then only `syncd migrate` creates it. A schema newer
than this syncd stops every command with one line and exit 2 (systemd does not restart on
2), instead of Alembic's "Can't locate revision" traceback.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from syncd.errors import StateError
from syncd.state.engine import alembic_config, create_state_engine, migrate, state_file_errors


class Access(StrEnum):
    """What a command may do to the schema."""

    SEND = "send"  # create or upgrade it when auto_migrate is true
    READ = "read"  # never change an existing schema
    MIGRATE = "migrate"  # `syncd migrate`: create or upgrade it, always


@dataclass(frozen=True)
class Versions:
    """The state database's revision (None: no syncd schema yet) and this syncd's newest."""

    current: str | None
    head: str
    known: frozenset[str]

    @property
    def newer(self) -> bool:
        return self.current is not None and self.current not in self.known

    def newer_problem(self) -> str:
        return (f"state schema {self.current} is newer than this syncd ({self.head}): upgrade syncd "
                "to the version that migrated it (README, Upgrading)")

    def older_problem(self) -> str:
        return f"state schema {self.current} is older than this syncd ({self.head}): run `syncd migrate`"


@dataclass(frozen=True)
class Migration:
    """What ensure_schema did: from `before` (None: a new database) to `after`."""

    before: str | None
    after: str

    @property
    def changed(self) -> bool:
        return self.before != self.after

    def __str__(self) -> str:
        if self.before is None:
            return f"created the state schema at {self.after}"
        if not self.changed:
            return f"already at {self.after}"
        return f"migrated {self.before} → {self.after}"


def versions(engine: Engine) -> Versions:
    script = ScriptDirectory.from_config(alembic_config(engine))
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    head = script.get_current_head()
    assert head is not None  # syncd ships its migrations
    return Versions(current, head, frozenset(s.revision for s in script.walk_revisions()))


def ensure_schema(engine: Engine, access: Access, auto_migrate: bool = True) -> Migration:
    """Bring the schema to this syncd's if `access` allows it; StateError (exit 2) otherwise."""
    with state_file_errors(engine):
        found = versions(engine)
    if found.newer:
        raise StateError(found.newer_problem())
    if found.current == found.head:
        return Migration(found.current, found.head)
    if _may_change(found, access, auto_migrate):
        migrate(engine)
        return Migration(found.current, versions(engine).current or found.head)
    if found.current is None:
        raise StateError("the state database has no syncd schema yet and [state] auto_migrate is "
                         "false: run `syncd migrate`")
    note = " ([state] auto_migrate is false)" if access is Access.SEND else ""
    raise StateError(found.older_problem() + note)


def _may_change(found: Versions, access: Access, auto_migrate: bool) -> bool:
    if access is Access.MIGRATE:
        return True
    if not auto_migrate:
        return False
    # A brand-new database has nobody relying on its schema: any command may create it.
    return access is Access.SEND or found.current is None


def migrate_state(url: str) -> Migration:
    """`syncd migrate`: the schema brought up to date; what was done."""
    engine = create_state_engine(url)
    try:
        return ensure_schema(engine, Access.MIGRATE)
    finally:
        engine.dispose()
