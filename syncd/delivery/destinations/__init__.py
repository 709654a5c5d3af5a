"""Destinations: one module per service behind the small interface in base.py. facts.py holds
what the config needs to know about each type; importing it does not load the HTTP client."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # config imports facts.py, which runs this file: import nothing heavy here
    from syncd.config import DestinationConfig
    from syncd.delivery.destinations.base import Destination


def make_destination(config: DestinationConfig) -> Destination:
    from syncd.delivery.destinations.nat import Nat
    from syncd.delivery.destinations.usercom import UserCom

    types: dict[str, type[Destination]] = {kind.facts.type: kind for kind in (Nat, UserCom)}
    return types[config.type](config)


__all__ = ["make_destination"]
