"""Destinations: one module per type, each a class behind base.py's interface; the types are
found in one registry (config/registry.py: built in, or registered by installed packages)."""

from __future__ import annotations

from syncd.config import DestinationConfig
from syncd.delivery.destinations.base import Destination


def make_destination(config: DestinationConfig) -> Destination:
    """The destination of `config`: an instance of its type's class (the registry checked it
    is a Destination when the config was loaded)."""
    kind = config.kind
    if not issubclass(kind, Destination):
        raise TypeError(f"destination type {config.type!r} is not a Destination")
    return kind(config)


__all__ = ["Destination", "make_destination"]
