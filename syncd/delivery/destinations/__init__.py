"""Destinations: one module per service behind the small interface in base.py."""

from syncd.config import DestinationConfig
from syncd.delivery.destinations.base import Destination
from syncd.delivery.destinations.nat import Nat
from syncd.delivery.destinations.usercom import UserCom

_TYPES: dict[str, type[Destination]] = {"nat": Nat, "usercom": UserCom}


def make_destination(config: DestinationConfig) -> Destination:
    return _TYPES[config.type](config)


__all__ = ["Destination", "Nat", "UserCom", "make_destination"]
