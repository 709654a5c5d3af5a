"""Parsing the values config.toml holds: durations, listen addresses, http(s) URLs, and the
spelling of numbers and TOML kinds in error messages. Pure: each raises ValueError or returns
a problem text, and the reader (reader.py) turns that into a ConfigError naming the key."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

_LISTEN_RE = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9.-]+)):(?P<port>\d{1,5})$")
_DURATION_RE = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_duration(text: str) -> timedelta:
    """'90s', '15m', '2h', '1h30m', '1d' -> timedelta; ValueError otherwise."""
    match = _DURATION_RE.match(text.strip()) if text.strip() else None
    if match is None:
        raise ValueError(f"{text!r} is not a duration like '90s', '15m', '2h' or '1h30m'")
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    try:
        return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    except OverflowError:
        raise ValueError(f"{text!r} is far too long") from None


def host_port(text: str) -> tuple[str, int]:
    """'127.0.0.1:9464', '[::1]:9464', 'localhost:9464' -> host and port; ValueError otherwise."""
    hint = f"{text!r} is not host:port (e.g. \"127.0.0.1:9464\", \"[::1]:9464\", \"0.0.0.0:9464\")"
    match = _LISTEN_RE.match(text.strip())
    if match is None:
        raise ValueError(hint)
    host = match.group("v6") or match.group("host")
    port = int(match.group("port"))
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range (1-65535)")
    return host, port


def http_url_problem(url: str) -> str | None:
    """Why `url` is not an http(s) URL syncd may send to, or None. Never echoes user information.

    User information ("user:pass@") is refused: httpx would send it as Basic credentials
    instead of the API key, and the 401 that follows would blame the key.
    """
    parts = urlsplit(url.strip())
    if "@" in parts.netloc:
        return ("must not contain user information (user:password@): "
                "put the key in api_key_env or api_key_file")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{url!r} is not an http(s) URL"
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number in range
    except ValueError:
        return f"{url!r} has an invalid port"
    return None


def spelled_number(value: float) -> str:
    """A bound or value in a message: floats as short as they go, integers with `_` groups."""
    return f"{value:g}" if isinstance(value, float) else f"{value:_}"


def kind_of(value: Any) -> str:
    """What a TOML value is, in a message ('a table', 'an array', ...)."""
    return {dict: "a table", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )
