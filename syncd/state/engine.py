"""Engines for the state and source databases, and running the migrations.

The SQLite state file holds emails and traits: syncd creates it readable by its owner only
(SQLite gives its -wal and -shm files the same mode), and tightens one it finds readable by
others (an older syncd created it with the umask's mode).

A run's stop request cancels the statements its snapshot has running (`cancelled_on`), in the
source and in the state database alike, instead of waiting for them to finish.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, cast

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import NoSuchModuleError, OperationalError, SQLAlchemyError

from syncd.config.dburl import redact_url, sqlite_file
from syncd.errors import StateError
from syncd.render import first_line

log = logging.getLogger("syncd")

# Per documented database: the extra that installs its driver, and that driver's name in a URL
# ("": the URL names none, e.g. duckdb:///file.duckdb).
EXTRAS = {"postgresql": ("postgres", "psycopg"), "mysql": ("mysql", "pymysql"),
          "mariadb": ("mysql", "pymysql"), "duckdb": ("duckdb", "")}


def create_state_engine(url: str, pool_size: int = 5) -> Engine:
    """An engine for the state database: SQLite gets WAL and a busy timeout. `pool_size`:
    connections kept open (a run holds one per audience it is sending, plus a few)."""
    parsed = make_url(url)
    try:
        if parsed.get_backend_name() != "sqlite":
            return create_engine(url, pool_pre_ping=True, pool_size=pool_size)
        engine = create_engine(url, connect_args={"timeout": 30}, pool_size=pool_size)
    except (ImportError, SQLAlchemyError) as exc:  # a driver or dialect that is not installed
        raise StateError(f"state database {redact_url(url)}: {engine_problem(url, exc)}") from None
    path = sqlite_file(url)
    if path is not None:
        _create_private(path)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        if sqlite_file(url):
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    return engine


def engine_problem(url: str, exc: Exception) -> str:
    """Why `create_engine(url)` failed, with what to do: a missing driver names the extra that
    installs it (and the URL prefix that uses it), a missing dialect the package to install.
    (`postgres://` is refused by the config already.)"""
    scheme = url.partition("://")[0]
    backend = scheme.partition("+")[0]
    missing = exc.name if isinstance(exc, ImportError) else None
    if missing is None and not isinstance(exc, NoSuchModuleError):
        return first_line(exc)
    if backend not in EXTRAS:
        if missing is None:
            return f"no SQLAlchemy dialect for {scheme}:// is installed: install the package that provides it"
        return f"the driver for {scheme}:// is not installed ({exc})"
    extra, ours = EXTRAS[backend]
    fix = f"pip install 'syncd[{extra}]'"
    if ours and missing not in (None, ours):  # e.g. mysql:// means mysqlclient (MySQLdb), not PyMySQL
        fix = f"write {backend}+{ours}:// and {fix}"
    return f"the {backend} driver is not installed ({exc if missing else 'its SQLAlchemy dialect'}): {fix}"


# TIMESTAMP columns, NOW() and `:now` all in UTC, whatever the server's own time zone.
_UTC_SESSION = {"postgresql": "SET TIME ZONE 'UTC'", "mysql": "SET time_zone = '+00:00'",
                "mariadb": "SET time_zone = '+00:00'", "duckdb": "SET TimeZone = 'UTC'"}


def in_utc(engine: Engine) -> None:
    """Every connection of a source engine starts its session in UTC (SQLite has no zone)."""
    setting = _UTC_SESSION.get(engine.dialect.name)
    if setting is not None:
        event.listen(engine, "connect", partial(_set_session, setting))


def _set_session(statement: str, dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(statement)
    finally:
        cursor.close()
    dbapi_connection.commit()  # PostgreSQL's SET is transactional: the pool's rollback would undo it


CANCEL_POLL = 0.1  # seconds between looks at the stop flag while statements run


@contextmanager
def cancelled_on(stop: threading.Event | None, engine: Engine) -> Iterator[None]:
    """While the block runs: once `stop` is set, cancel what runs on the connections that
    this thread takes from `engine` (the engine's other users, such as the lease keeper's
    thread, go on). The cancelled statement raises in the block; its transaction rolls back."""
    if stop is None:
        yield
        return
    me, lock, done = threading.get_ident(), threading.Lock(), threading.Event()
    taken: dict[int, Callable[[], Any]] = {}  # id -> how to cancel it, until cancelled or given back

    def on_checkout(dbapi: Any, _record: Any, _proxy: Any) -> None:
        if threading.get_ident() == me:
            cancel = canceller(dbapi, engine)  # in this thread: mysqlclient refuses other threads
            with lock:
                taken[id(dbapi)] = cancel

    def on_checkin(dbapi: Any, _record: Any) -> None:
        with lock:
            taken.pop(id(dbapi), None)

    def watch() -> None:
        while not done.is_set():
            if stop.wait(CANCEL_POLL) and not done.is_set():
                with lock:  # a connection taken after the stop is cancelled in its turn
                    for cancel in taken.values():
                        with suppress(Exception):  # the statement may have just ended; the server gone
                            cancel()
                    taken.clear()
                done.wait(CANCEL_POLL)

    event.listen(engine, "checkout", on_checkout)
    event.listen(engine, "checkin", on_checkin)
    watcher = threading.Thread(target=watch, name="syncd-cancel", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()
        event.remove(engine, "checkout", on_checkout)
        event.remove(engine, "checkin", on_checkin)


def canceller(dbapi: Any, engine: Engine) -> Callable[[], Any]:
    """How another thread abandons the statement running on a driver connection: sqlite3's and
    DuckDB's interrupt(), psycopg's cancel_safe() (3.2+) or cancel(), psycopg2's cancel();
    MySQL/MariaDB drivers have none: `KILL QUERY` from a second connection."""
    if engine.dialect.name in ("mysql", "mariadb"):
        return partial(_kill_query, engine, dbapi.thread_id())
    for name in ("interrupt", "cancel_safe", "cancel"):
        method = getattr(dbapi, name, None)
        if method is not None:
            return cast(Callable[[], Any], method)
    return lambda: None  # a driver that cannot cancel: the statement runs to its end


def _kill_query(engine: Engine, thread_id: int) -> None:
    """`KILL QUERY` stops the statement and keeps the connection; a user may kill its own."""
    cargs, cparams = engine.dialect.create_connect_args(engine.url)
    killer = engine.dialect.connect(*cargs, **cparams)  # outside the pool: no checkout events
    try:
        cursor = killer.cursor()
        cursor.execute(f"KILL QUERY {int(thread_id)}")
        cursor.close()
    finally:
        killer.close()


def migrations_dir() -> Path:
    """`migrations/` beside the package in a checkout, or shipped inside the wheel."""
    package = Path(__file__).resolve().parent.parent  # syncd/
    for candidate in (package / "migrations", package.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError("syncd's migrations/ folder is missing from this installation")


def alembic_config(engine: Engine) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["engine"] = engine
    return cfg


def migrate(engine: Engine) -> None:
    """Bring the state schema up to date (idempotent)."""
    with state_file_errors(engine):
        command.upgrade(alembic_config(engine), "head")


@contextmanager
def state_file_errors(engine: Engine) -> Iterator[None]:
    """A SQLite state file that cannot be opened or written, as a StateError naming it. Every
    process reads the schema's version first, so that is where such a file is reported."""
    try:
        yield
    except OperationalError as exc:
        path = sqlite_file(engine.url.render_as_string(hide_password=False))
        if path is None or not any(s in str(exc.orig) for s in ("unable to open", "readonly")):
            raise  # e.g. a locked database: not a problem of the configured file
        raise StateError(f"state database file {path}: {first_line(exc.orig)}"
                         f"{_folder_hint(Path(path))}") from None


def _create_private(path: str) -> None:
    """Create the SQLite file readable by its owner only, before SQLite creates it with the
    umask's mode; an existing file is left as it is."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        if not os.access(path, os.R_OK | os.W_OK):
            raise StateError(f"state database file {path} is not readable and writable by this "
                             "user") from None
        _tighten(path)
        return
    except OSError as exc:
        raise StateError(f"state database file {path}: cannot create it: {exc.strerror}"
                         f"{_folder_hint(Path(path))}") from None


def _tighten(path: str) -> None:
    """A state file that others may read (an older syncd created it with the umask's mode)
    becomes 0600, with its -wal and -shm files; one warning says so."""
    loose = []
    for name in (path, f"{path}-wal", f"{path}-shm"):
        try:
            mode = stat.S_IMODE(os.stat(name).st_mode)
            if mode & 0o077:
                os.chmod(name, 0o600)
                loose.append(mode)
        except OSError:  # no -wal file, or not ours to change: SQLite will say if it matters
            continue
    if loose:
        log.warning("state database file %s was readable by other users (mode %s); it holds emails "
                    "and traits: made it readable by its owner only (0600)", path,
                    stat.filemode(stat.S_IFREG | loose[0]))


def _folder_hint(path: Path) -> str:
    folder = path.absolute().parent
    if not folder.is_dir():
        return f" (folder {folder} does not exist)"
    if not os.access(folder, os.W_OK):
        return f" (folder {folder} is not writable; SQLite keeps -wal and -shm files beside the database)"
    return ""


def now() -> datetime:
    return datetime.now(UTC)


def upsert(conn: Connection, table: Any) -> Any:
    """The dialect's INSERT that understands ON CONFLICT."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)
