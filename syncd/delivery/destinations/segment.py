"""Any receiver of Segment's HTTP Tracking API (Segment itself, RudderStack, Customer.io Data
Pipelines, Dittofeed, ...): events POSTed in batches to `endpoint` (`/v1/batch`), the write key
as Basic auth user.

Each user's call (the Identify of one or more audiences, grouped as for Nat) becomes events:
the Identify, and with `events` including "track" Engage's `Audience Entered` / `Audience
Exited` per audience change; delivery/batches.py packs them into calls of `batch_size` events,
500 KB and 32 KB per event. Every event has its own deterministic messageId (the receivers
deduplicate on it), the same on every resend of the same content: it is made from the
changes' ids and the event's content (`content_id`), so a change re-sent with the member's
new email is not dropped as a duplicate of what it was sent with before.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from syncd.config import Address, Choices, Number
from syncd.delivery.destinations.base import IDENTITY_FIELDS, Destination, Event, basic_auth
from syncd.delivery.wire import Answer, Probe, Request, json_ascii, json_bytes
from syncd.estimate import CallEstimate, Workload
from syncd.identify import computation_id
from syncd.model import Change, digest_id

TRACK_NAMES = {True: "Audience Entered", False: "Audience Exited"}


class Segment(Destination):
    type = "segment"
    integration = "Segment"
    settings = (Address("endpoint"), Number("batch_size", int, 500, (1, 2500)),
                Choices("events", ("identify", "track"), ("identify",)))
    # Segment asks for under 1,000 requests/s; a call carries up to batch_size events.
    rate_limit = 50.0
    concurrency = 4
    reserved = IDENTITY_FIELDS | {"audience_key"}  # audience_key: Engage's Track properties
    bulk_paths = frozenset({"batches"})
    # Segment's documented limits (max_call_bytes, max_event_bytes: the base's); receivers
    # such as RudderStack's take more per call.

    def headers(self) -> dict[str, str]:
        """Basic auth with the write key as user; a key given as the whole header value
        (`Basic …`, as Dittofeed shows its write key) is sent as it is."""
        key = self.config.resolved_key.reveal()
        return {"Authorization": key if key.startswith("Basic ") else basic_auth(key)}

    def request(self, message: dict[str, Any], audience_key: str) -> Request:
        """One Identify alone, as a batch of one (delivery sends batches: `batch()`)."""
        return self.batch([encoded(message)], message["timestamp"])

    def batch(self, events: Sequence[bytes], sent_at: str) -> Request:
        """One call of events (each its JSON), joined as they are: `{"batch": [...], "sentAt":
        ...}`; `sent_at`: now, as Segment corrects the events' clock by it."""
        content = b'{"batch":[' + b",".join(events) + b'],"sentAt":' + json_bytes(sent_at) + b"}"
        return Request("POST", self.config.url, content=content)

    def events(self, message: dict[str, Any], carried: Sequence[tuple[str, Change]]) -> list[Event]:
        """The events of one user's call (`message`: its Identify, carrying the changes
        `carried` as (audience key, change)), each as sent with the changes it carries."""
        events: list[Event] = []
        if "identify" in self.config.settings["events"]:
            events.append(Event(encoded(message), list(carried)))
        if "track" in self.config.settings["events"]:
            events += [Event(encoded(track_event(message, key, change.message_id(key, self.name))),
                             [(key, change)]) for key, change in carried]
        return events

    def probe(self, call: Callable[[Request], Answer]) -> Probe:
        """An empty batch without the write key: it carries no event, so nothing is sent; a
        receiver that checks keys refuses it. The key itself cannot be checked without sending
        an event (Segment takes any key and drops a bad key's events later)."""
        answer = call(Request("POST", self.config.url, {"batch": []}, anonymous=True))
        if answer.status in (401, 403):
            return Probe(True, f"reachable; a call without the write key is refused as expected "
                               f"(HTTP {answer.status}); the key itself is checked only by sending "
                               "an event, which check never does")
        if answer.status in (404, 405) or answer.status >= 500:
            return Probe(False, f"a Segment batch call to {self.config.url} answered {answer.reason}: "
                                "is endpoint the receiver's batch URL (…/v1/batch)?")
        return Probe(True, f"reachable (HTTP {answer.status}); it took a call without a write key "
                           "(Segment does, and drops such events later): the key itself is checked "
                           "only by sending an event, which check never does")

    def estimate(self, work: Workload) -> CallEstimate:
        """Batches: each user's Identify and/or each change's Track, `batch_size` per call."""
        chosen = self.config.settings["events"]
        events = work.users * ("identify" in chosen) + work.changes * ("track" in chosen)
        return CallEstimate((("batches", math.ceil(events / self.batch_size)),))


def track_event(message: dict[str, Any], key: str, change_id: str) -> dict[str, Any]:
    """Engage's Track form of one audience change carried by the user's Identify `message`;
    its messageId from the change's own (`change_id`), whatever else the Identify carries."""
    value = message["traits"][key]
    context = {**message["context"],
               "personas": {**message["context"]["personas"], "computation_key": key,
                            "computation_id": computation_id(key)}}
    email = message["traits"].get("email")
    if email:
        context["traits"] = {"email": email}
    ids = {k: message[k] for k in ("userId", "anonymousId") if not _null_id(k, message[k])}
    return {
        "type": "track", "event": TRACK_NAMES[value], **ids,
        "messageId": track_message_id(change_id),
        "timestamp": message["timestamp"],
        "properties": {"audience_key": key, key: value},
        "context": context,
    }


def encoded(event: dict[str, Any]) -> bytes:
    """The event as sent (`wire.json_bytes`), without `integrations` (at Segment `{"All":
    false}` would keep it from every destination the workspace connects) nor a null id, and
    with a messageId from its changes' (the one it has) and the parts of its content a resend
    can change (not its timestamp or syncd's version): a resend of the same event keeps its id,
    so the receiver drops the duplicate; a pending change re-sent with other data (a new email,
    an anonymousId, extra traits) is a new event, which a receiver must not drop as a repeat.
    The rest of the event follows from the changes (type, name); the parts that do not (the
    personas: whichever audience's page carried them) are built in a fixed order, so no key
    sorting is needed."""
    body = {key: value for key, value in event.items() if key != "integrations" and not _null_id(key, value)}
    context = event["context"]
    varying = [body.get("userId"), body.get("anonymousId"), event.get("traits"), event.get("properties"),
               context["personas"], context.get("page"), context.get("traits")]
    body["messageId"] = digest_id([event["messageId"], json_ascii(varying)])
    return json_bytes(body)


def track_message_id(change_id: str) -> str:
    """Never the id of the change's Identify (which, alone, is the change's own id)."""
    return digest_id(["track", change_id])


def _null_id(field: str, value: Any) -> bool:
    """userId or anonymousId without a value: left out (one of them is always there)."""
    return field in ("userId", "anonymousId") and value is None
