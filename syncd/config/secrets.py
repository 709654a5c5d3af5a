"""Secrets: where each comes from (SecretSource: an environment variable or a file), read only
by the commands that send, and the value wrapped in Secret, which never prints."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from syncd.errors import ConfigError

log = logging.getLogger("syncd")


class Secret:
    """An API key. Its repr and str never show the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class SecretSource:
    """Where a secret comes from: an environment variable or a file (absolute path).

    Loading the config records only this; `resolve` reads the value, for the commands that
    send. `key` is the key path that named it (e.g. "destinations.nat.api_key_env"), for errors.
    """

    config_path: str
    key: str
    env: str | None = None
    file: Path | None = None

    def resolve(self, environ: Mapping[str, str]) -> Secret:
        """The value as a Secret; a ConfigError naming the file, key path and variable or file."""
        if self.env is not None:
            value = environ.get(self.env, "").strip()
            if not value:
                raise ConfigError(self.config_path, self.key, f"environment variable {self.env} is not set")
            return Secret(value)
        assert self.file is not None
        try:
            with self.file.open(encoding="utf-8") as handle:
                mode = os.fstat(handle.fileno()).st_mode
                value = handle.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            problem = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError(self.config_path, self.key, f"cannot read {self.file}: {problem}") from None
        if not value:
            raise ConfigError(self.config_path, self.key, f"{self.file} is empty")
        if mode & (stat.S_IRGRP | stat.S_IROTH):
            log.warning("%s: %s: %s is readable by other users (mode %s); chmod 600 it",
                        self.config_path, self.key, self.file, stat.filemode(mode))
        return Secret(value)


def resolve_secret(value: Secret | SecretSource, environ: Mapping[str, str]) -> Secret:
    """A Secret as is; a SecretSource read now (ConfigError if it cannot be)."""
    return value if isinstance(value, Secret) else value.resolve(environ)
