"""Change -> Segment-spec Identify message (pure; golden-file tested)."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import lru_cache
from operator import itemgetter
from typing import Any

from syncd import __version__
from syncd.model import Change, call_message_id
from syncd.render import iso_millis

MAX_MESSAGE_BYTES = 32 * 1024  # Segment's limit for one call



@lru_cache(maxsize=1024)
def computation_id(audience_key: str) -> str:
    """A stable id for the audience, as Engage's computation_id (kept: a run asks per message)."""
    return "aud_" + hashlib.sha256(audience_key.encode()).hexdigest()[:24]


def json_value(value: Any) -> Any:
    """A query value as JSON keeps its type: numbers stay numbers (a whole decimal an integer),
    timestamps become ISO-8601 in UTC with `Z` (one without a zone is taken as UTC), dates
    `YYYY-MM-DD`, JSON columns objects, arrays lists; only what has no JSON form becomes text.
    Values that are JSON already come back as they are, so applying it twice changes nothing."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)  # JSON has no NaN or Infinity
    if isinstance(value, datetime):
        return iso_millis(value if value.tzinfo else value.replace(tzinfo=UTC))
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        if not value.is_finite():
            return str(value)
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def identify(
    change: Change, audience_key: str, destination: str, integration: str, timestamp: datetime,
    riders: Sequence[tuple[str, Change]] = (),
) -> dict[str, Any]:
    """The Identify of `change` of `audience_key`, carrying too the same user's `riders`
    (changes of other audiences, as (key, change)): every changed key in `traits`, the extra
    traits of the entering audiences merged in key order, the personas of `audience_key`."""
    carried = [(audience_key, change), *riders]
    if riders:
        carried.sort(key=itemgetter(0))
    traits: dict[str, Any] = {}
    email = _email(change, carried)
    if email:
        traits["email"] = email
    for _, each in carried:
        if each.value:
            traits.update({k: json_value(v) for k, v in each.traits.items()})
    for key, each in carried:
        traits[key] = each.value
    context: dict[str, Any] = {
        "personas": {
            "computation_class": "audience",
            "computation_key": audience_key,
            "computation_id": computation_id(audience_key),
        },
        "library": {"name": "syncd", "version": __version__},
    }
    url = change.url if change.value else None
    url = url or next((c.url for _, c in carried if c.value and c.url), None)
    if url:
        context["page"] = {"url": url}
    return {
        "type": "identify",
        "userId": change.user_id,
        "anonymousId": change.anonymous_id,
        "messageId": call_message_id([c.message_id(key, destination) for key, c in carried]),
        "timestamp": _iso_millis(timestamp),
        "traits": traits,
        "context": context,
        "integrations": {"All": False, integration: True},
    }


def _email(change: Change, carried: Sequence[tuple[str, Change]]) -> str | None:
    """An entering change has the member's current email; a leave's is the one last sent."""
    if change.value and change.email:
        return change.email
    entering = next((c.email for _, c in carried if c.value and c.email), None)
    return entering or change.email or next((c.email for _, c in carried if c.email), None)


@lru_cache(maxsize=16)
def _iso_millis(moment: datetime) -> str:
    """A run's messages share one timestamp (its snapshot time): formatted once."""
    return iso_millis(moment)


def size_of(message: dict[str, Any]) -> int:
    return len(json.dumps(message, separators=(",", ":")).encode())
