"""The units of work: a snapshot row, and a change (enter or leave) for one destination.

Which changes exist is decided in SQL (ledger.py: desired vs acknowledged); this
module holds the pure parts: identities, and the deterministic messageId.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any


def subject_of(user_id: str | None, anonymous_id: str | None) -> str | None:
    """The ledger's identity: user_id when there is one, else anonymous_id."""
    if user_id:
        return f"u:{user_id}"
    if anonymous_id:
        return f"a:{anonymous_id}"
    return None


@dataclass(frozen=True)
class SnapshotRow:
    user_id: str | None
    anonymous_id: str | None
    email: str | None
    url: str | None
    traits: dict[str, Any] = field(default_factory=dict)

    @property
    def subject(self) -> str:
        subject = subject_of(self.user_id, self.anonymous_id)
        assert subject is not None, "a SnapshotRow always has an identifier"
        return subject

    def approximate_size(self) -> int:
        size = len(self.user_id or "") + len(self.anonymous_id or "") + len(self.email or "")
        size += len(self.url or "")
        if self.traits:
            size += sum(len(str(v)) + len(k) for k, v in self.traits.items())
        return size

    def as_tuple(self) -> tuple[str, str | None, str | None, str | None, str | None, str | None]:
        """(subject, user_id, anonymous_id, email, url, traits JSON) for bulk loading."""
        traits = json.dumps(self.traits, sort_keys=True, default=str) if self.traits else None
        subject = f"u:{self.user_id}" if self.user_id else f"a:{self.anonymous_id}"  # == self.subject
        return (subject, self.user_id, self.anonymous_id, self.email, self.url, traits)


@dataclass(frozen=True)
class Change:
    """One Identify to send: `value` is the audience trait's new value."""

    subject: str
    user_id: str | None
    anonymous_id: str | None
    email: str | None
    seq: int  # acknowledged changes so far for this subject at this destination
    value: bool
    url: str | None = None
    traits: dict[str, Any] = field(default_factory=dict)

    def message_id(self, audience_key: str, destination: str) -> str:
        """Same change, same id on every retry; the next change gets a new one."""
        material = "\x1f".join(
            (audience_key, destination, self.subject, str(self.seq), "1" if self.value else "0")
        )
        return "syncd-" + hashlib.sha256(material.encode()).hexdigest()[:32]


def Enter(**kwargs: Any) -> Change:
    return Change(value=True, **kwargs)


def Leave(**kwargs: Any) -> Change:
    return Change(value=False, **kwargs)
