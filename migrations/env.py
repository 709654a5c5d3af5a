"""Alembic environment: the schema is SQLModel.metadata from syncd.models.

syncd runs migrations from code (`syncd migrate`, and before every run) with the
engine in `config.attributes["engine"]`; the `alembic` command line works too,
given `-x url=...`. fileConfig() is deliberately not called: it would reset the
daemon's logging.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine
from sqlmodel import SQLModel

import syncd.state.tables  # noqa: F401  (registers the tables)
from syncd.state.engine import create_state_engine

config = context.config
target_metadata = SQLModel.metadata


def _engine() -> Engine:
    engine = config.attributes.get("engine")
    if engine is not None:
        return engine
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise SystemExit("pass the state database as: alembic -x url=sqlite:///syncd-state.db ...")
    return create_state_engine(url)


def run_migrations_online() -> None:
    engine = _engine()
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            # One transaction for the whole upgrade on SQLite too (see BEGIN IMMEDIATE below);
            # Alembic would otherwise commit after each migration.
            transactional_ddl=True,
        )
        with context.begin_transaction():
            # Several processes may meet a new or older schema at once (a daemon starting while
            # `syncd status` runs): migrate one at a time, and let the others see either the old
            # schema or the new one, never a half-built one.
            if connection.dialect.name == "postgresql":
                connection.exec_driver_sql("SELECT pg_advisory_xact_lock(727465)")
            else:
                # Python's sqlite3 runs DDL outside any transaction unless one was begun
                # explicitly; IMMEDIATE also takes the write lock (the others wait: busy_timeout).
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            context.run_migrations()
        connection.commit()


run_migrations_online()
