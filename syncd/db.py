"""Engines for the state and source databases, and running the migrations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url


def sqlite_file(url: str) -> str | None:
    """The file a SQLite URL names; None for another database or an in-memory one."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return str(parsed.database)


def create_state_engine(url: str, pool_size: int = 5) -> Engine:
    """An engine for the state database: SQLite gets WAL and a busy timeout. `pool_size`:
    connections kept open (a run holds one per audience it is sending, plus a few)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, pool_size=pool_size)
    engine = create_engine(url, connect_args={"timeout": 30}, pool_size=pool_size)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        if sqlite_file(url):
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    return engine


def migrations_dir() -> Path:
    """`migrations/` beside the package in a checkout, or shipped inside the wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "migrations", here.parent / "migrations"):
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
    command.upgrade(alembic_config(engine), "head")
