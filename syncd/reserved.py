"""Field names syncd itself sends: an audience key or an extra query column may not use them.

An audience key such as `email` or `custom_id` would overwrite the identity a destination keys
its records by (Nat keeps contacts by email; User.com by custom_id), putting every member onto
one contact. The list is the union over destinations: a key that is safe at one destination
today would corrupt identities when the audience is connected to the other tomorrow.
"""

from __future__ import annotations

# Identity fields of a Segment Identify and of User.com's update_or_create body.
IDENTITY_FIELDS = frozenset({
    "email", "user_id", "userId", "anonymous_id", "anonymousId", "custom_id", "id", "url",
})

# User.com's standard user attributes (mapped from Identify traits and context).
USERCOM_STANDARD_FIELDS = frozenset({
    "first_name", "last_name", "phone", "gender", "address", "country", "region", "city",
    "user_agent", "os", "device_name", "device_type", "language", "resolution", "ip_address",
    "browser_family", "browser_version", "timezone", "current_url",
})

RESERVED_FIELDS = IDENTITY_FIELDS | USERCOM_STANDARD_FIELDS


def is_reserved(name: str) -> bool:
    return name in RESERVED_FIELDS
