"""Database URLs read without SQLAlchemy, so reading the config (and failing on it) stays light;
and `redact_url`, the one way a database URL goes into a message.

The pattern is SQLAlchemy's own (`sqlalchemy.engine.url._parse_url`, 2.0): a URL this accepts is
one `create_engine` accepts, and the two agree on the backend and the database part.
"""

from __future__ import annotations

import re
from typing import NamedTuple
from urllib.parse import unquote

_URL = re.compile(
    r"""
        (?P<name>[\w\+]+)://
        (?:
            (?P<username>[^:/]*)
            (?::(?P<password>[^@]*))?
        @)?
        (?:
            (?:
                \[(?P<ipv6host>[^/\?]+)\] |
                (?P<ipv4host>[^/:\?]+)
            )?
            (?::(?P<port>[^/\?]*))?
        )?
        (?:/(?P<database>[^\?]*))?
        (?:\?(?P<query>.*))?
    """,
    re.X,
)


class DbUrl(NamedTuple):
    backend: str  # "sqlite", "postgresql" (the driver after "+" left out)
    database: str | None


def parse_db_url(url: str) -> DbUrl | None:
    """The backend and database a URL names; None if it is not a database URL."""
    match = _URL.match(url)
    if match is None or (match["port"] and not match["port"].isdigit()):
        return None
    database = unquote(match["database"]) if match["database"] is not None else None
    return DbUrl(match["name"].split("+")[0], database)


def sqlite_file(url: str) -> str | None:
    """The file a SQLite URL names; None for another database or an in-memory one."""
    parsed = parse_db_url(url)
    if parsed is None or parsed.backend != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return parsed.database


def redact_url(url: str) -> str:
    """A database URL fit for a message: its password, if any, shown as ***."""
    match = _URL.match(url)
    if match is None or match["password"] is None:
        return url
    start, end = match.span("password")
    return url[:start] + "***" + url[end:]
