"""Engines for the state and source databases, and running the migrations.

The SQLite state file holds emails and traits: syncd creates it readable by its owner only
(SQLite gives its -wal and -shm files the same mode).

A run's stop request cancels the statements its snapshot has running (`cancelled_on`), in the
source and in the state database alike, instead of waiting for them to finish.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from syncd.config.dburl import redact_url, sqlite_file
from syncd.errors import StateError
from syncd.render import first_line


def create_state_engine(url: str, pool_size: int = 5) -> Engine:
    """An engine for the state database: SQLite gets WAL and a busy timeout. `pool_size`:
    connections kept open (a run holds one per audience it is sending, plus a few)."""
    parsed = make_url(url)
    try:
        if parsed.get_backend_name() != "sqlite":
            return create_engine(url, pool_pre_ping=True, pool_size=pool_size)
        engine = create_engine(url, connect_args={"timeout": 30}, pool_size=pool_size)
    except ImportError as exc:  # the URL names a driver that is not installed
        raise StateError(f"state database {redact_url(url)}: its driver is not installed ({exc})") from None
    except SQLAlchemyError as exc:  # e.g. an unknown dialect
        raise StateError(f"state database {redact_url(url)}: {first_line(exc)}") from None
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
    taken: dict[int, Any] = {}  # id -> driver connection, until cancelled or given back

    def on_checkout(dbapi: Any, _record: Any, _proxy: Any) -> None:
        if threading.get_ident() == me:
            with lock:
                taken[id(dbapi)] = dbapi

    def on_checkin(dbapi: Any, _record: Any) -> None:
        with lock:
            taken.pop(id(dbapi), None)

    def watch() -> None:
        while not done.is_set():
            if stop.wait(CANCEL_POLL) and not done.is_set():
                with lock:  # a connection taken after the stop is cancelled in its turn
                    for dbapi in taken.values():
                        cancel(dbapi)
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


def cancel(dbapi: Any) -> None:
    """Ask the database to abandon the statement running on a driver connection (from another
    thread): sqlite3's interrupt(), psycopg's cancel_safe() (3.2+) or cancel(), psycopg2's cancel()."""
    for name in ("interrupt", "cancel_safe", "cancel"):
        method = getattr(dbapi, name, None)
        if method is not None:
            with suppress(Exception):  # the statement may have just ended: nothing to cancel
                method()
            return


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
    """Bring the state schema up to date (idempotent). Every process does this first, so a
    SQLite file that cannot be opened or written is reported here, as a StateError."""
    try:
        command.upgrade(alembic_config(engine), "head")
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
        return
    except OSError as exc:
        raise StateError(f"state database file {path}: cannot create it: {exc.strerror}"
                         f"{_folder_hint(Path(path))}") from None


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
