"""syncd's one error tree. Each error says what the caller does; the exit code lives on it.

    SyncdError                 the root; main() exits with exc.exit_code (1 unless below says 2)
    ├── ConfigError            config.toml is wrong (file, key path, problem): exit 2
    ├── UsageError             a command-line argument does not fit the config: exit 2
    │   └── cli.main.UsageExit argparse's complaint, shown with the usage line
    ├── StateError             the state database cannot be used as configured: exit 2
    ├── RunInProgress          another process holds the run lease: exit 1
    ├── Stopped                a stop request (SIGTERM/SIGINT) ended `plan`: exit 1
    ├── MetricsError           the metrics endpoint cannot start (port taken): exit 1
    ├── SourceError            an audience's query failed: that audience fails, the run goes on
    │   └── ColumnError        it ran, but its columns cannot be sent (no identifier, ...)
    └── DestinationError       this pair stays undelivered for this run; the others go on
        └── DestinationConflict  ...and in every run until a person changes the destination

ConfigError and UsageError are the user's input: main() prints them as one plain line
(`syncd: ...`); the others are logged. SourceError and DestinationError are handled inside
a run and reach main() only through a bug. (A stop request cancelling a query is not an
error: source.QueryStopped stays beside the code that raises it. SQLAlchemy's own errors
are caught where they happen, or by main() as a state database error.)
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar


class SyncdError(Exception):
    """The root of syncd's errors."""

    exit_code: ClassVar[int] = 1
    # True: the user's input is wrong, and the message is the whole answer (no log record).
    user_input: ClassVar[bool] = False


class ConfigError(SyncdError):
    """A mistake in the configuration: the process exits 2."""

    exit_code = 2
    user_input = True

    def __init__(self, path: str | Path, key: str, problem: str) -> None:
        self.path, self.key, self.problem = str(path), key, problem
        super().__init__(f"{path}: {key}: {problem}" if key else f"{path}: {problem}")


class UsageError(SyncdError):
    """A command-line argument that does not fit the config (unknown audience...): exit 2."""

    exit_code = 2
    user_input = True


class StateError(SyncdError):
    """The state database cannot be used as configured (a missing driver, a file that cannot
    be created or written): one line naming the URL or the file, exit 2."""

    exit_code = 2


class RunInProgress(SyncdError):
    """Another syncd process holds the run lease."""


class Stopped(SyncdError):
    """A stop request (SIGTERM/SIGINT) cancelled a command's queries before it finished."""


class MetricsError(SyncdError):
    """The metrics endpoint could not be started (e.g. the port is taken)."""


class SourceError(SyncdError):
    """The audience's query could not be run: this audience fails, the others go on."""


class ColumnError(SourceError):
    """The query runs, but its columns cannot be sent: no user_id or anonymous_id, or a column
    that would overwrite the audience's trait or an identity. Named as such, not as a
    failed query: the fix is in the query's select list."""


class DestinationError(SyncdError):
    """A destination-level problem that leaves this audience undelivered for this run."""


class DestinationConflict(DestinationError):
    """The destination holds something syncd must not change on its own (User.com: the
    audience's attribute with another type than boolean): the pair sends nothing, in every
    run, until a person fixes it; an alert says so."""
