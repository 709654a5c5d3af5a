"""Run an audience's query against its source database and stream the members.

The query goes to the database as written: only `:now` outside string literals, quoted
names and comments is a parameter, so `x::text` and `'{"a":1}'::jsonb` mean what they say.
`:now` is bound in the type each database compares as a timestamp, and syncd's sessions run
in UTC (as the snapshot time and the timestamps sent), so `:now - INTERVAL 30 DAY` means the
same everywhere. A run's stop flag cancels the query in flight (PostgreSQL's cancel request,
SQLite's and DuckDB's interrupt, MySQL's `KILL QUERY`) instead of waiting for it to finish.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, CursorResult, Engine, create_engine
from sqlalchemy.exc import DBAPIError, ResourceClosedError, SQLAlchemyError

from syncd.config import AudienceConfig, Config
from syncd.config.dburl import parse_db_url
from syncd.errors import ColumnError, SourceError
from syncd.identify import MAX_MESSAGE_BYTES, identify, json_value, size_of
from syncd.model import Change, SnapshotRow, Task, traits_json
from syncd.render import first_line, iso, one_line
from syncd.reserved import is_reserved
from syncd.state.engine import cancelled_on, engine_problem, in_utc
from syncd.state.snapshots import SnapshotCounts

IDENTITY_COLUMNS = ("user_id", "anonymous_id")
KNOWN_COLUMNS = (*IDENTITY_COLUMNS, "email", "url")
# What the database reads as text, a name or a comment, where `:now` is not a parameter;
# else `:now` itself. One left-to-right scan: the leftmost match wins.
_NOW_OR_QUOTED = re.compile(r"""
      (?<!\w)[Ee]'(?:\\.|''|[^'\\])*'        # E'...' (PostgreSQL): backslash escapes
    | '(?:''|[^'])*'                        # a string literal; '' is a quote inside
    | "(?:""|[^"])*"                        # a quoted name
    | `[^`]*`                               # a MySQL/SQLite quoted name
    | --[^\n]*                              # a line comment
    | /\*.*?\*/                             # a block comment
    | \$(?P<tag>(?:[A-Za-z_]\w*)?)\$.*?\$(?P=tag)\$   # a dollar-quoted string (PostgreSQL)
    | (?P<now>(?<![:\w]):now(?!\w))
""", re.VERBOSE | re.DOTALL)
_TRAILER = re.compile(r"[\s;]+$")  # what may end a statement's code: blanks and semicolons
# Nat and User.com refuse what is not an address; such an email is dropped and counted.
_EMAIL = re.compile(r"^[^@\s\x00]+@[^@\s\x00]+\.[^@\s\x00]+$")
LARGE_ROW = 8 * 1024  # rows smaller than this cannot make a 32 KB message


class QueryStopped(Exception):
    """The run was asked to stop while the query ran: the query was cancelled."""


def open_source(url: str) -> Engine:
    """An engine for a source database; a missing SQLite or DuckDB file is an error, not a new
    empty file. A DuckDB file is opened read-only, so the team's own writer is not locked out."""
    path = _database_file(url)
    if path is not None and not Path(path).is_file():
        raise SourceError(f"source database file {path} does not exist")
    try:
        engine = create_engine(url, pool_pre_ping=True,
                               connect_args={"read_only": True} if path and url.startswith("duckdb") else {})
    except (ImportError, SQLAlchemyError) as exc:
        raise SourceError(engine_problem(url, exc)) from None
    in_utc(engine)
    return engine


def _database_file(url: str) -> str | None:
    """The file a SQLite or DuckDB URL names; None for another database or an in-memory one."""
    parsed = parse_db_url(url)
    if parsed is None or parsed.backend not in ("sqlite", "duckdb"):
        return None
    return None if parsed.database in (None, "", ":memory:") else parsed.database


def now_param(snapshot_at: datetime, dialect: str = "sqlite") -> Any:
    """The run's snapshot time as bound to `:now`, in the type the database compares as a
    timestamp without a warning: PostgreSQL an aware datetime (timestamptz), MySQL/MariaDB and
    DuckDB a naive UTC one (DATETIME, TIMESTAMP; their sessions are in UTC); SQLite, which has
    no timestamp type, and any other database ISO-8601 text in UTC."""
    if dialect == "postgresql":
        return snapshot_at.astimezone(UTC)
    if dialect in ("mysql", "mariadb", "duckdb"):
        return snapshot_at.astimezone(UTC).replace(tzinfo=None)
    return iso(snapshot_at)


def take_snapshot(config: Config, audience: AudienceConfig, snapshot_at: datetime, counts: SnapshotCounts,
                  load: Callable[[Iterator[SnapshotRow]], None], task: Task | None = None,
                  stop: threading.Event | None = None) -> str | None:
    """Run the audience's query on its source and hand the rows to `load` (a run merges them
    into the ledger, `plan` into a scratch table). Returns the error that fails the audience
    when its query cannot run; a stop request raises QueryStopped. `task` is closed once the
    source was opened."""
    try:
        source = open_source(config.sources[audience.source].url)
        try:
            load(stream_members(source, audience.query, snapshot_at, counts, task,
                                audience_key=audience.key, stop=stop))
        finally:
            source.dispose()
            if task is not None:
                task.close()
    except ColumnError as exc:
        return f"the query ran on source {audience.source!r}, but its columns cannot be sent: {exc}"
    except SourceError as exc:
        return f"query failed on source {audience.source!r}: {exc}"
    return None


def stream_members(
    engine: Engine, query: str, snapshot_at: datetime, counts: SnapshotCounts, task: Task | None = None,
    *, audience_key: str | None = None, stop: threading.Event | None = None,
) -> Iterator[SnapshotRow]:
    """Yield the usable rows; count the others (and emails dropped as invalid) in `counts`.
    `task`, if given, advances by every row read (skipped ones included). `audience_key`: a
    column of that name fails the query (it would overwrite the audience's trait). `stop`: when
    set, the query is cancelled and QueryStopped raised."""
    try:
        with cancelled_on(stop, engine), engine.connect() as conn:
            result = execute(conn, query, snapshot_at)
            columns = Columns(list(result.keys()), audience_key, _converters(conn.dialect.name, result))
            # partitions() fetches yield_per rows per round trip instead of one at a time.
            for partition in result.partitions(2_000):
                if stop is not None and stop.is_set():
                    raise QueryStopped
                counts.rows += len(partition)
                for values in partition:
                    member = to_member(values, columns, counts)
                    if member is not None:
                        yield member
                if task is not None:
                    task.advance(len(partition))
    except SQLAlchemyError as exc:
        if stop is not None and stop.is_set():
            raise QueryStopped from None
        raise SourceError(_one_line(exc)) from None


def query_columns(conn: Connection, query: str, snapshot_at: datetime, audience_key: str) -> list[str]:
    """The query's column names, checked as a run checks them (SourceError otherwise), without
    fetching a row: it runs wrapped in `LIMIT 0`, so the database plans it and returns none.
    The query goes in without what may follow its statement (a `;`, comments); the newline
    keeps a `-- comment` inside it from swallowing the wrapper."""
    wrapped = f"SELECT * FROM ({statement_of(query)}\n) AS q LIMIT 0"
    try:
        result = execute(conn, wrapped, snapshot_at)
        names = list(result.keys())
        result.close()
    except SQLAlchemyError as exc:
        raise SourceError(_one_line(exc)) from None
    finally:
        conn.rollback()  # a failed query must not spoil the next one's transaction (PostgreSQL)
    Columns(names, audience_key)
    return names


def statement_of(query: str) -> str:
    """The query up to the end of its statement: without the whitespace, comments and `;` a
    person may end it with (`SELECT ... ; -- buyers`). Strings, quoted names and comments
    inside it are kept as they are."""
    end = pos = 0
    for match in [*_NOW_OR_QUOTED.finditer(query), None]:
        start = match.start() if match else len(query)
        code = _TRAILER.sub("", query[pos:start])
        if code:
            end = pos + len(code)
        if match is None:
            break
        if not match.group(0).startswith(("--", "/*")):
            end = match.end()
        pos = match.end()
    return query[:end]


def execute(conn: Connection, query: str, snapshot_at: datetime) -> CursorResult[Any]:
    """Run the query as written, streaming its rows; `:now` bound to the snapshot time."""
    statement, params = bind_now(query, now_param(snapshot_at, conn.dialect.name), conn.dialect.paramstyle)
    conn = conn.execution_options(stream_results=True, yield_per=2_000)
    if params is None:  # nothing to bind: the driver must not read `%` or `?` as placeholders
        return conn.execution_options(no_parameters=True).exec_driver_sql(statement)
    return conn.exec_driver_sql(statement, params)


def bind_now(query: str, now: Any, paramstyle: str) -> tuple[str, Any]:
    """The query in the driver's parameter style, and its parameters (None: no `:now`)."""
    uses = sum(1 for m in _NOW_OR_QUOTED.finditer(query) if m.group("now"))
    if not uses:
        return query, None
    if paramstyle in ("format", "pyformat"):
        query = query.replace("%", "%%")  # these drivers read every % as a placeholder's start
    marker = {"qmark": "?", "format": "%s", "pyformat": "%(now)s", "numeric": ":1",
              "numeric_dollar": "$1"}.get(paramstyle, ":now")
    statement = _NOW_OR_QUOTED.sub(lambda m: marker if m.group("now") else m.group(0), query)
    if paramstyle in ("qmark", "format"):
        return statement, tuple([now] * uses)
    if paramstyle in ("numeric", "numeric_dollar"):
        return statement, (now,)
    return statement, {"now": now}


def _converters(dialect: str, result: CursorResult[Any]) -> dict[int, Callable[[Any], Any]]:
    """Columns whose driver hands over another type than the database's: MySQL's BOOLEAN is
    TINYINT(1) (an int), its JSON a string, and MariaDB's JSON a LONGTEXT; DuckDB's JSON a
    string. Position -> conversion (a value that does not convert stays as it is)."""
    description = (result.cursor.description if result.cursor is not None else None) or ()
    found: dict[int, Callable[[Any], Any]] = {}
    for i, column in enumerate(description):
        code, size = column[1], column[3]
        if dialect in ("mysql", "mariadb"):
            if code in (_MYSQL_TINY, _MYSQL_BIT) and size == 1:
                found[i] = _boolean
            elif code == _MYSQL_JSON or (code == _MYSQL_BLOB and size == _LONGTEXT):
                found[i] = _json
        elif dialect == "duckdb" and str(code) == "JSON":
            found[i] = _json
    return found


_MYSQL_TINY, _MYSQL_BIT, _MYSQL_JSON, _MYSQL_BLOB = 1, 16, 245, 252  # pymysql.constants.FIELD_TYPE
_LONGTEXT = 2**32 - 1  # MariaDB's JSON is LONGTEXT (with a json_valid check)


def _boolean(value: Any) -> Any:
    if isinstance(value, bytes):  # BIT(1)
        value = int.from_bytes(value, "big")
    return bool(value) if isinstance(value, int) else value


def _json(value: Any) -> Any:
    """JSON text -> its object or list; other text (a LONGTEXT that is not JSON) as it is."""
    if isinstance(value, str) and value.lstrip()[:1] in ("{", "["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


class Columns:
    """Where the known columns sit in the query's rows; every other column is an extra trait,
    converted first where `typed` says the driver's type is not the database's (_converters)."""

    def __init__(self, names: list[str], audience_key: str | None = None,
                 typed: dict[int, Callable[[Any], Any]] | None = None) -> None:
        if not any(c in names for c in IDENTITY_COLUMNS):
            raise ColumnError(
                f"the query returns no user_id or anonymous_id column (it returns: "
                f"{', '.join(names) or 'nothing'})"
            )
        _check_extras(names, audience_key)
        at = {name: i for i, name in enumerate(names)}  # a repeated name: the last one counts
        self.user_id, self.anonymous_id, self.email, self.url = (at.get(c) for c in KNOWN_COLUMNS)
        self.extras = [(name, i) for name, i in at.items() if name not in KNOWN_COLUMNS]
        self.typed = {i: convert for i, convert in (typed or {}).items() if i in dict(self.extras).values()}


def _check_extras(names: list[str], audience_key: str | None) -> None:
    """An extra column named like the audience key or a field syncd sends itself would
    overwrite that trait or identity at the destination: the query fails instead. User.com
    files "First Name" under `first_name`, so names are compared that way too."""
    for name in names:
        if name in KNOWN_COLUMNS:
            continue
        std = _ATTRIBUTE_NAME.sub("_", name.lower()).strip("_")
        if audience_key in (name, std):
            raise ColumnError(f"column {name!r} would overwrite the trait of the audience key "
                              f"{audience_key!r}: rename it in the query")
        if is_reserved(name) or is_reserved(std):
            raise ColumnError(f"column {name!r} would overwrite the field "
                              f"{name if is_reserved(name) else std!r} that syncd sends itself "
                              "(an identity or a User.com standard attribute): rename it in the query")


_ATTRIBUTE_NAME = re.compile(r"[^a-z0-9]+")  # how User.com turns a trait name into an attribute


def to_member(values: Sequence[Any], at: Columns, counts: SnapshotCounts) -> SnapshotRow | None:
    """One query row -> a member, or None (counted) if it cannot be sent.

    This runs once per row of million-row snapshots: positional access, no dict per row
    unless the query has extra trait columns."""
    user_id = None if at.user_id is None else identifier(values[at.user_id])
    anonymous_id = None if at.anonymous_id is None else identifier(values[at.anonymous_id])
    if user_id is None and anonymous_id is None:
        counts.no_identifier += 1
        return None
    email = None if at.email is None else _text(values[at.email])
    if email is not None and not _EMAIL.match(email):
        counts.invalid_email += 1
        email = None
    url = None if at.url is None else _clean(_text(values[at.url]))
    if at.typed:
        values = list(values)
        for i, convert in at.typed.items():
            values[i] = convert(values[i])
    traits = {name: json_value(_clean(values[i])) for name, i in at.extras} if at.extras else None
    size = len(user_id or "") + len(anonymous_id or "") + len(email or "") + len(url or "")
    if traits:
        size += sum(len(name) + len(str(value)) for name, value in traits.items())
    if size > LARGE_ROW and _too_large(user_id, anonymous_id, email, url, traits or {}):
        counts.too_large += 1
        return None
    subject = f"u:{user_id}" if user_id else f"a:{anonymous_id}"
    return SnapshotRow(subject, user_id, anonymous_id, email, url, traits_json(traits) if traits else None)


def identifier(value: Any) -> str | None:
    """An identifier as text: 42 and 42.0 are "42"; empty, NUL-bearing or boolean ids are none."""
    if type(value) is str:  # the common case, on the hot path of million-row snapshots
        value = value.strip()
        return value if value and "\x00" not in value else None
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, float | Decimal) and _is_whole(value):
        value = int(value)
    text_value = _text(value)
    return None if text_value is None or "\x00" in text_value else text_value


def _is_whole(value: float | Decimal) -> bool:
    if isinstance(value, Decimal):
        return value.is_finite() and value == value.to_integral_value()
    return value.is_integer()


def _text(value: Any) -> str | None:
    if type(value) is str:
        return value.strip() or None
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    text_value = str(value).strip()
    return text_value or None


def _clean(value: Any) -> Any:
    """PostgreSQL text cannot hold NUL: drop it from extra traits."""
    return value.replace("\x00", "") if isinstance(value, str) else value


def _too_large(user_id: str | None, anonymous_id: str | None, email: str | None, url: str | None,
               traits: dict[str, Any]) -> bool:
    change = Change(subject="", user_id=user_id, anonymous_id=anonymous_id, email=email, seq=0,
                    value=True, url=url, traits=traits)
    message = identify(change, "x" * 64, "destination", "Destination", datetime.now(UTC))
    return size_of(message) > MAX_MESSAGE_BYTES


def _one_line(exc: SQLAlchemyError) -> str:
    """The database's own message on one line, without SQLAlchemy's decoration (the statement,
    its parameters, the link to its documentation) or the driver's excerpt of the query."""
    if isinstance(exc, ResourceClosedError):
        return "the query returns no rows: it must be one SELECT"
    orig = exc.orig if isinstance(exc, DBAPIError) else None
    if orig is not None:
        args = orig.args
        # MySQL drivers' errors are (code, message): the message alone reads as the others do.
        mysql = len(args) == 2 and isinstance(args[0], int) and isinstance(args[1], str)
        message = args[1] if mysql else first_line(orig)
        hint = getattr(getattr(orig, "diag", None), "message_hint", None)
        if hint:
            message += f" ({hint})"
    else:
        message = _DECORATION.sub("", str(exc)).strip()
    return one_line(message, 300)


_DECORATION = re.compile(r"\[SQL: .*|\(Background on this error at: [^)]*\)", re.DOTALL)
