"""What the rest of syncd needs to know about each destination type, importable without the
HTTP client: config.py validates and fills in defaults from these, and each destination class
(nat.py, usercom.py) carries its own as `facts`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Facts:
    type: str  # `type = "..."` in config.toml
    integration: str  # the name in Segment's `integrations` object
    url_field: str  # the config key that holds the address
    # Defaults: requests per second, requests in flight. Neither Nat nor User.com publishes a
    # rate limit we could confirm, so these stay well under what such APIs commonly allow; a
    # destination that still answers 429 is slowed by its Retry-After.
    rate_limit: float
    concurrency: int
    base_url: bool = False  # paths are appended to the address: it always ends in "/"
    needs_email: bool = False  # the destination keys its users by email
    # Mass updates: users per chunk by default (`bulk_size`); None: the type has none, and
    # `bulk_size` is an unknown key for it.
    bulk_size: int | None = None


NAT = Facts("nat", "Nat", "endpoint", rate_limit=20.0, concurrency=8,
            needs_email=True)  # Nat refuses an Identify without traits.email
USERCOM = Facts("usercom", "User.com", "base_url", rate_limit=10.0, concurrency=4, base_url=True,
                bulk_size=100)  # conservative: User.com documents no limit on ids per call

FACTS: dict[str, Facts] = {facts.type: facts for facts in (NAT, USERCOM)}
