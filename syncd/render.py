"""Text shown to people, one way each: durations, times, tables, errors on one line.

Pure functions with no imports from syncd, so every layer (config, source, state, delivery,
the daemon, the CLI) can use them; output stays byte-identical across the places that show
the same thing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def duration(seconds: int, units: str = "dhms", most: int | None = None, pad: bool = False) -> str:
    """Whole seconds, largest unit first (the first of `units` takes what the others cannot).

    Without `most`: every unit that is not zero, the spelling config.toml reads ('1h30m', '0s').
    With `most`: that many units from the first that is not zero, zeros kept ('3d0h', '42s'): a
    rough age. `pad`: minutes and seconds after the first unit get two digits ('2h05m')."""
    parts: list[tuple[int, str]] = []
    rest = seconds
    for unit in units:
        value, rest = divmod(rest, _UNIT_SECONDS[unit])
        parts.append((value, unit))
    if most is None:
        return "".join(f"{v}{u}" for v, u in parts if v) or f"0{units[-1]}"
    while len(parts) > 1 and parts[0][0] == 0:
        parts.pop(0)
    shown = parts[:most]
    return "".join(f"{v:02d}{u}" if pad and i and u in "ms" else f"{v}{u}" for i, (v, u) in enumerate(shown))


def plural(count: int, word: str, many: str | None = None) -> str:
    """'1 call', '2 calls', '0 calls'; `many` where adding an s is wrong ('1 query', '2 queries')."""
    return f"{count} {word if count == 1 else many or word + 's'}"


def spelled(delta: timedelta, units: str = "dhms") -> str:
    """A timedelta as config.toml spells it: '1h30m', '30d', '0s'."""
    return duration(int(delta.total_seconds()), units)


def iso(moment: datetime) -> str:
    """2026-11-22T09:00:00Z (the moment as given: callers pass UTC)."""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def maybe_iso(moment: datetime | None) -> str | None:
    return iso(moment) if moment else None


def readable(moment: datetime) -> str:
    """2026-11-22 09:00:00Z: a time in a sentence for people."""
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def iso_millis(moment: datetime) -> str:
    """2026-11-22T09:00:00.000Z"""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def table(rows: list[list[str]]) -> str:
    """Left-aligned columns two spaces apart, the first row the header; no trailing blanks."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


def first_line(exc: BaseException | None) -> str:
    """An exception's first line (drivers append context on the next ones), else its type."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


# What SQLAlchemy appends to a driver's message: the statement, its parameters, a documentation link.
_DECORATION = re.compile(r"\[SQL: .*|\(Background on this error at: [^)]*\)", re.DOTALL)


def database_error(exc: BaseException, limit: int = 300) -> str:
    """A database error on one line, as a person reads it: the driver's own message (its first
    line) without SQLAlchemy's decoration, which cut at `limit` left a dangling
    "(Background on this error at:"."""
    orig = getattr(exc, "orig", None)
    text = first_line(orig) if orig is not None and str(orig).strip() else _DECORATION.sub("", str(exc))
    return one_line(text, limit) or type(exc).__name__


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret (a key, a header token) replaced by ***."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def one_line(value: object, limit: int = 200) -> str:
    """An error (or any text) on one line, whitespace runs folded, cut at `limit` characters."""
    return " ".join(str(value).split())[:limit]
