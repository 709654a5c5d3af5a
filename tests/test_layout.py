"""The layout's promises (ARCHITECTURE.md), read from the code's own imports and calls:
SQL on the state database is written in state/ only, and the arrows between the rooms
point down (state <- run <- daemon, cli; the daemon never imports the command line)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import syncd

PACKAGE = Path(syncd.__file__).parent

# What code outside state/ may take from SQLAlchemy: types to pass engines, connections and
# tables along, errors to catch, and source.py's engines. No statement builders.
SQLALCHEMY_OUTSIDE_STATE = {"Engine", "Connection", "Table", "CursorResult", "create_engine", "make_url"}
# Modules that run statements themselves: source.py queries the source databases (not the
# state), the demo seeds its shop with sqlite3.
RUNS_STATEMENTS = {"source.py", "dev/demo.py"}
STATEMENT_CALLS = {"execute", "exec_driver_sql", "scalar", "scalars", "executemany"}


def _modules(under: str = "") -> Iterator[tuple[str, ast.Module]]:
    for path in sorted((PACKAGE / under).rglob("*.py")):
        yield path.relative_to(PACKAGE).as_posix(), ast.parse(path.read_text(), str(path))


def _imports(tree: ast.Module) -> Iterator[tuple[str, str]]:
    """(module, name) for every `from module import name`, and (module, "") for `import module`."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                yield node.module, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, ""


def test_state_database_sql_is_written_in_state_only() -> None:
    found = []
    for name, tree in _modules():
        if name.startswith("state/"):
            continue
        for module, imported in _imports(tree):
            if (module == "sqlalchemy" or module.startswith("sqlalchemy.")) and module != "sqlalchemy.exc" \
                    and imported not in SQLALCHEMY_OUTSIDE_STATE:
                found.append(f"{name} imports {imported or module} from {module}")
        if name not in RUNS_STATEMENTS:
            found += [f"{name}:{node.lineno} calls .{node.func.attr}()" for node in ast.walk(tree)
                      if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                      and node.func.attr in STATEMENT_CALLS]
    assert found == []


def test_arrows_point_down_and_the_daemon_never_imports_the_command_line() -> None:
    never = {"state/": ("syncd.run", "syncd.daemon", "syncd.cli"), "run/": ("syncd.daemon", "syncd.cli"),
             "daemon/": ("syncd.cli",), "delivery/": ("syncd.run", "syncd.daemon", "syncd.cli")}
    found = [f"{name} imports {module}"
             for under, above in never.items() for name, tree in _modules(under)
             for module, imported in _imports(tree)
             if any(f"{module}.{imported}".startswith(room) for room in above)]
    assert found == []
