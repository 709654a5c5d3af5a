"""Walking the TOML tree: each value read with its type and bounds checked, every mistake a
ConfigError naming the file, the key path and what is wrong."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from syncd.config.dburl import parse_db_url, redact_url
from syncd.config.secrets import SecretSource
from syncd.config.values import http_url_problem, kind_of, parse_duration, spelled_number
from syncd.errors import ConfigError
from syncd.render import spelled


class Reader:
    """Reads one config file's tables, remembering the file for error messages."""

    def __init__(self, path: Path, environ: Mapping[str, str]) -> None:
        self.path = path
        self.environ = environ

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.path, key, problem)

    def table(self, data: Any, key: str, allowed: set[str]) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise self.error(key, f"must be a table, not {kind_of(data)}")
        for name in data:
            if name not in allowed:
                where = f"{key}.{name}" if key else name
                raise self.error(where, f"unknown key (allowed: {', '.join(sorted(allowed))})")
        return data

    def get(self, data: dict[str, Any], key: str, field: str, kind: type, default: Any) -> Any:
        value = data.get(field, default)
        if value is None:
            return None
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(f"{key}.{field}", f"must be {kind.__name__}, not {kind_of(value)}")
        return value

    def required_str(self, data: dict[str, Any], key: str, field: str) -> str:
        value = self.get(data, key, field, str, None)
        if value is None or not value.strip():
            raise self.error(f"{key}.{field}", "is required")
        return str(value)

    def duration(self, data: dict[str, Any], key: str, field: str, default: timedelta,
                 bounds: tuple[timedelta, timedelta]) -> timedelta:
        text = self.get(data, key, field, str, None)
        if text is None:
            return default
        try:
            value = parse_duration(text)
        except ValueError as exc:
            raise self.error(f"{key}.{field}", str(exc)) from None
        low, high = bounds
        if not low <= value <= high:
            raise self.error(f"{key}.{field}", f"must be between {spelled(low)} and "
                                               f"{spelled(high)}, not {text!r}")
        return value

    def number(self, data: dict[str, Any], key: str, field: str, kind: type, default: Any,
               bounds: tuple[Any, Any]) -> Any:
        """An int or float within bounds (nan and inf never are)."""
        value = self.get(data, key, field, kind, default)
        low, high = bounds
        if not low <= value <= high:  # nan too: every comparison with it is false
            raise self.error(f"{key}.{field}", f"must be between {spelled_number(low)} and "
                                               f"{spelled_number(high)}, not {spelled_number(value)}")
        return value

    def secret_source(self, table: dict[str, Any], key: str, prefix: str) -> SecretSource | None:
        """`<prefix>_env` or `<prefix>_file` (not both) -> where the secret comes from; None if
        neither is set. A relative file is relative to the config file's folder."""
        env_name = self.get(table, key, f"{prefix}_env", str, None)
        file_name = self.get(table, key, f"{prefix}_file", str, None)
        if env_name is not None and file_name is not None:
            raise self.error(key, f"set only one of {prefix}_env or {prefix}_file")
        if env_name is not None:
            if not env_name.strip():
                raise self.error(f"{key}.{prefix}_env", "must name an environment variable")
            return SecretSource(str(self.path), f"{key}.{prefix}_env", env=env_name.strip())
        if file_name is not None:
            if not file_name.strip():
                raise self.error(f"{key}.{prefix}_file", "must name a file")
            file = (self.path.parent / file_name).absolute()  # an absolute name stays as it is
            return SecretSource(str(self.path), f"{key}.{prefix}_file", file=file)
        return None

    def db_url(self, data: dict[str, Any], key: str, default: str | None) -> str:
        url = self.get(data, key, "url", str, default)
        if url is None:
            raise self.error(f"{key}.url", "is required")
        parsed = parse_db_url(url)
        if parsed is None:
            raise self.error(f"{key}.url", f"{redact_url(url)!r} is not a database URL")
        if parsed.backend == "postgres":  # SQLAlchemy dropped that alias: "Can't load plugin"
            raise self.error(f"{key}.url", "SQLAlchemy has no 'postgres' dialect: write "
                                           "postgresql+psycopg://…")
        return str(url)

    def http_url(self, table: dict[str, Any], key: str, field: str) -> str:
        url = self.required_str(table, key, field)
        problem = http_url_problem(url)
        if problem is not None:
            raise self.error(f"{key}.{field}", problem)
        return url
