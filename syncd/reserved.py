"""Field names syncd itself sends: an audience key or an extra query column may not use them.

An audience key such as `email` or `custom_id` would overwrite the identity a destination keys
its records by (Nat keeps contacts by email; User.com by custom_id), putting every member onto
one contact. Each destination type names its own (`Destination.reserved`); the list is the
union over types: a key that is safe at one destination today would corrupt identities when
the audience is connected to the other tomorrow.
"""

from __future__ import annotations

from syncd.config.registry import reserved_fields


def is_reserved(name: str, types: tuple[str, ...] = ()) -> bool:
    """Reserved at a built-in destination type or at one of `types` (installed ones)."""
    return name in reserved_fields(types)
