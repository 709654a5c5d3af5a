"""The config keys a destination type declares for itself (its `settings`), read and checked
by the config through these declarations: the type's module says what it takes, the config
says what is wrong, in the same words for every type.

Every destination also has the common keys (`type`, `api_key_env`/`api_key_file`,
`rate_limit`, `concurrency`, `timeout`); these are the others. A setting the table lacks
gets its default; a key no setting declares is an unknown key.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from syncd.config.reader import Reader


class Setting(ABC):
    """One config key of a destination type's own."""

    key: str

    @abstractmethod
    def read(self, reader: Reader, table: dict[str, Any], where: str) -> Any:
        """The value in `table` (the destination's table at key path `where`), checked;
        a ConfigError (reader.error) naming `where.key` if it is wrong."""


@dataclass(frozen=True)
class Address(Setting):
    """The http(s) URL the destination is reached at; required, and without user information
    (credentials belong in api_key_env/api_key_file). `base`: request paths are appended to
    it, so it always ends in "/"."""

    key: str
    base: bool = False

    def read(self, reader: Reader, table: dict[str, Any], where: str) -> str:
        url = reader.http_url(table, where, self.key)
        return url + "/" if self.base and not url.endswith("/") else url


@dataclass(frozen=True)
class Number(Setting):
    """An int or float between `bounds` (inclusive), `default` when not set."""

    key: str
    kind: type[int] | type[float]
    default: int | float
    bounds: tuple[int, int] | tuple[float, float]

    def read(self, reader: Reader, table: dict[str, Any], where: str) -> int | float:
        value: int | float = reader.number(table, where, self.key, self.kind, self.default, self.bounds)
        return value


@dataclass(frozen=True)
class Choices(Setting):
    """A non-empty list of distinct words out of `allowed`, `default` when not set (e.g. which
    events a destination sends)."""

    key: str
    allowed: tuple[str, ...]
    default: tuple[str, ...]

    def read(self, reader: Reader, table: dict[str, Any], where: str) -> tuple[str, ...]:
        given = reader.get(table, where, self.key, list, None)
        if given is None:
            return self.default
        known = ", ".join(f'"{word}"' for word in self.allowed)
        if not given or len(set(map(str, given))) != len(given):
            raise reader.error(f"{where}.{self.key}", f"must list one or more of {known}, each once")
        for word in given:
            if word not in self.allowed:
                raise reader.error(f"{where}.{self.key}", f"unknown value {word!r} (known: {known})")
        return tuple(given)


def address_key(settings: tuple[Setting, ...]) -> str | None:
    """The key of a type's address (`endpoint`, `base_url`, ...), if it declares one."""
    return next((s.key for s in settings if isinstance(s, Address)), None)
