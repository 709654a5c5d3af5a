"""Destination types: the built-in ones, and those installed packages register in the
`syncd.destinations` entry-point group (SPEC 2). One registry for both.

A type is a class (delivery/destinations/base.py documents the interface). The registry names
each by "module:Class" and imports it when asked (as APScheduler loads its plugins): the
config sits below delivery/ and never imports it by name, yet reads each type's settings,
defaults and needs from the class itself. Importing a destination module loads no HTTP client,
so a config error still stops syncd before httpx or SQLAlchemy is loaded.

Entry points are read only when a type is not built in, or to list the installed types.
"""

from __future__ import annotations

import importlib
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeAlias, cast

from syncd.config.settings import Setting
from syncd.render import one_line

if TYPE_CHECKING:
    from syncd.estimate import CallEstimate, Workload

GROUP = "syncd.destinations"
BUILT_IN = {
    "nat": "syncd.delivery.destinations.nat:Nat",
    "usercom": "syncd.delivery.destinations.usercom:UserCom",
    "segment": "syncd.delivery.destinations.segment:Segment",
}
BASE = "syncd.delivery.destinations.base:Destination"


class DestinationType(Protocol):
    """What the config reads of a destination class (the whole interface is documented once,
    in delivery/destinations/base.py), and what reading the state asks of one without sending:
    the calls its work takes (`status`, `plan`)."""

    type: ClassVar[str]
    integration: ClassVar[str]
    settings: ClassVar[tuple[Setting, ...]]
    rate_limit: ClassVar[float]
    concurrency: ClassVar[int]
    needs_email: ClassVar[bool]
    reserved: ClassVar[frozenset[str]]
    key_limit: ClassVar[int | None]

    # config: its DestinationConfig (config/model.py, which imports this module: not named here)
    def __init__(self, config: Any) -> None: ...

    def estimate(self, work: Workload) -> CallEstimate: ...


# A destination class, as the config sees it (`type` is also a field name of DestinationConfig).
DestinationClass: TypeAlias = type[DestinationType]


class TypeNotFound(LookupError):
    """No such destination type, or its package failed to load: the message says which."""


@cache
def destination_type(name: str) -> DestinationClass:
    """The class of destination type `name`; TypeNotFound (one line) if there is none or its
    package cannot be loaded."""
    target = BUILT_IN.get(name)
    if target is None:
        entry = _installed().get(name)
        if entry is None:
            raise TypeNotFound(f"unknown type {name!r} (known: {', '.join(installed_types())})")
        target = entry.value
    try:
        found = _load(target)
    except Exception as exc:  # a plug-in's import can fail in any way: say which, on one line
        raise TypeNotFound(f"destination type {name!r} ({target}) failed to load: "
                           f"{type(exc).__name__}: {one_line(exc)}") from None
    base = cast(type, _load(BASE))
    if not isinstance(found, type) or not issubclass(found, base):
        raise TypeNotFound(f"destination type {name!r} ({target}) is not a syncd destination "
                           f"(a subclass of {BASE.replace(':', '.')})")
    if getattr(found, "type", None) != name or not isinstance(getattr(found, "integration", None), str):
        raise TypeNotFound(f"destination type {name!r} ({target}) must set `type = {name!r}` and "
                           "`integration` (its name in Segment's integrations object)")
    return cast(DestinationClass, found)


def installed_types() -> list[str]:
    """Every type name this installation knows: built in, then registered by packages."""
    return [*BUILT_IN, *sorted(set(_installed()) - set(BUILT_IN))]


def reserved_fields(types: tuple[str, ...] = ()) -> frozenset[str]:
    """The field names syncd sends itself at the built-in types and at `types` (see reserved.py)."""
    names = dict.fromkeys([*BUILT_IN, *types])
    return frozenset().union(*(destination_type(name).reserved for name in names))


def _installed() -> dict[str, EntryPoint]:
    """The types installed packages register (the first package wins a name)."""
    found: dict[str, EntryPoint] = {}
    for entry in entry_points(group=GROUP):
        found.setdefault(entry.name, entry)
    return found


def _load(target: str) -> object:
    module, _, name = target.partition(":")
    return cast(object, getattr(importlib.import_module(module), name))
