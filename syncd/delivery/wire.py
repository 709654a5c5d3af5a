"""What goes to a destination and what an answer means, without the HTTP client: a Request
(what a destination class builds), the Verdict on an answer (`classify`), the Result of a
request once sent and retried (sender.py), and for `check --connect` the Answer a probe reads
and the Probe it returns. Destination modules import this, never httpx: loading the config
loads their classes, and a config error must not load the HTTP client.

Every HTTP answer is classified into what the caller does next:

    ACK     2xx: the destination accepted the change
    RETRY   408, 429, 5xx but 501, timeouts, connection errors: try again later
    REJECT  any other 4xx (and 501): give up on this change for this run
    STOP    401/403: the key is revoked or the domain not trusted; stop this
            destination for the rest of the run

`classify` is the default; a destination class may answer differently (Destination.classify).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from json.encoder import (  # type: ignore[attr-defined]
    c_make_encoder,
    encode_basestring,
    encode_basestring_ascii,
)
from typing import Any, NamedTuple


class Verdict(enum.Enum):
    ACK = "ack"
    RETRY = "retry"
    REJECT = "reject"
    STOP = "stop"


def classify(status: int) -> Verdict:
    if 200 <= status < 300:
        return Verdict.ACK
    if status in (401, 403):
        return Verdict.STOP
    if status in (408, 429) or (status >= 500 and status != 501):
        return Verdict.RETRY
    return Verdict.REJECT


@dataclass(frozen=True)
class Request:
    method: str
    url: str
    body: dict[str, Any] | None = None
    anonymous: bool = False  # sent without the Authorization header (a probe's refusal check)
    content: bytes | None = None  # the body as JSON already (`json_bytes`), sent instead of `body`


def _not_json(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# json's C encoder, made once (a first sync serialises millions of values; json.dumps with
# options makes one per call): compact, no NaN; as httpx sends a `json=` body (UTF-8), and
# with non-ASCII escaped (what messageIds are made from).
_encode = c_make_encoder(None, _not_json, encode_basestring, None, ":", ",", False, False, False)
_encode_ascii = c_make_encoder(None, _not_json, encode_basestring_ascii, None, ":", ",", False, False, False)


def json_ascii(value: Any) -> str:
    """`value` as compact JSON text, non-ASCII escaped (`json.dumps` with compact separators)."""
    return "".join(_encode_ascii(value, 0))


def json_bytes(value: Any) -> bytes:
    """`value` as httpx sends a `json=` body (compact, UTF-8): a batch's events are serialised
    once, measured against the size limits and joined into the call as they are."""
    return "".join(_encode(value, 0)).encode()


@dataclass(frozen=True)
class Result:
    verdict: Verdict | None  # None: not tried (the destination was stopped or set aside)
    attempts: int = 0
    status: int | None = None
    error: str | None = None
    uncertain: bool = False  # the last attempt may have been applied
    body: Any = None


class Answer(NamedTuple):
    """One HTTP answer, as a probe reads it."""

    status: int
    reason: str  # "HTTP 403 Forbidden: <the destination's own words>"
    body: Any  # the JSON body; None if it was not JSON

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class Probe(NamedTuple):
    """What `syncd check --connect` says of a destination: fine or not, and why."""

    ok: bool
    message: str
