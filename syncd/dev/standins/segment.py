"""Segment's HTTP Tracking API (`POST /v1/batch`, `/v1/identify`, `/v1/track`), as Segment,
RudderStack, Customer.io Data Pipelines and Dittofeed receive it.

What it answers, and where it differs from Segment on purpose:

- `Authorization: Basic base64("<write_key>:")`, else `401` (RudderStack's answer; Segment
  itself may take the call and drop it later).
- A body without `Content-Type: application/json` is a `400`, as Segment documents it.
- Segment's documented limits, each a `400` with the reason in `message`: a call over
  500 KB (`/v1/batch`; 32 KB for a single event), an event over 32 KB in a batch (its
  compact JSON), more than 2,500 events in a batch, a body that is not JSON.
- An event that Segment would take and then drop (no `userId` nor `anonymousId`, a track
  without `event`, an unknown `type`) is a `400` naming its index: stricter than Segment
  (which answers 200), so that a client's bug shows in a test instead of vanishing.
- `refuse(user_id=…)` / `refuse(message_id=…)`: every batch holding such an event is a
  `400` naming it, as a receiver refuses one bad event (a client narrows it down), until
  `heal()`.
- A `2xx` accepts every event of the call: `accepted()` lists them in order (duplicates
  included); `deduplicated()` keeps the first per messageId, as Segment does, and
  `duplicates` counts the others. An event without a messageId gets one, as at Segment.
- `record=False` (benchmarks) keeps counts and messageIds only, not the events.
- Faults, 429 with Retry-After and the rate limit come from `StandIn`, as for the others.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from syncd.dev.standins.base import Reply, StandIn, basic_auth

MAX_CALL_BYTES = 500 * 1024
MAX_EVENT_BYTES = 32 * 1024
MAX_BATCH_EVENTS = 2500
EVENT_TYPES = ("identify", "track", "page", "screen", "group", "alias")
SINGLE = {"/v1/identify": "identify", "/v1/track": "track"}
BATCH = "/v1/batch"


class SegmentStandIn(StandIn):
    """A receiver of Segment's HTTP Tracking API: Basic auth with the write key as user."""

    name = "Segment"

    def __init__(self, write_key: str, port: int = 0, host: str = "127.0.0.1",
                 record: bool = True) -> None:
        self.record = record
        super().__init__(write_key, port, host)

    @property
    def service_url(self) -> str:
        return self.endpoint

    @property
    def endpoint(self) -> str:
        return self.url + BATCH

    def reset(self) -> None:
        super().reset()
        with self._lock:
            self._refusals: list[tuple[str, str]] = []  # (event field, value)
            self._seen: dict[str, dict[str, Any] | None] = {}  # messageId -> first event
            self.events_accepted = 0
            self.sizes: list[tuple[int, int]] = []  # per accepted call: events, bytes
            self._generated = 0

    def refuse(self, *, user_id: str | None = None, message_id: str | None = None) -> None:
        """Answer 400 to every call that holds an event of this userId or messageId."""
        with self._lock:
            if user_id is not None:
                self._refusals.append(("userId", user_id))
            if message_id is not None:
                self._refusals.append(("messageId", message_id))

    def heal(self) -> None:
        """Back to normal service: the refusals end too (what was received stays)."""
        super().heal()
        with self._lock:
            self._refusals = []

    def deduplicated(self) -> dict[str, dict[str, Any] | None]:
        """The first accepted event per messageId (None when `record` is off)."""
        with self._lock:
            return dict(self._seen)

    @property
    def duplicates(self) -> int:
        with self._lock:
            return self.events_accepted - len(self._seen)

    # -- the API -----------------------------------------------------------------------------

    def route_raw(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> Reply:
        target = urlsplit(path).path
        if target != BATCH and target not in SINGLE:
            return 404, _error("not found"), {}
        if method != "POST":
            return 405, _error("method not allowed"), {}
        if headers.get("Authorization") != basic_auth(self.api_key):
            return 401, _error("invalid write key"), {}
        content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
        if content_type.split(";")[0].strip() != "application/json":
            return 400, _error(f"Content-Type must be application/json, not {content_type!r}"), {}
        limit = MAX_CALL_BYTES if target == BATCH else MAX_EVENT_BYTES
        if len(raw) > limit:
            return 400, _error(f"request of {len(raw)} bytes is over the limit of {limit // 1024} KB"), {}
        try:
            body = json.loads(raw)
        except ValueError:
            return 400, _error("invalid JSON"), {}
        events = _events(body, SINGLE.get(target))
        if isinstance(events, str):
            return 400, _error(events), {}
        problem = _problem(events, check_sizes=len(raw) > MAX_EVENT_BYTES) or self._refused(events)
        if problem:
            return 400, _error(problem), {}
        self._record(events, len(raw))
        return 200, {"success": True}, {}

    def _refused(self, events: list[dict[str, Any]]) -> str | None:
        with self._lock:
            rules = list(self._refusals)
        for index, event in enumerate(events):
            for field, value in rules:
                if event.get(field) == value:
                    return f"event {index} ({field} {value}) is refused by this receiver"
        return None

    def _record(self, events: list[dict[str, Any]], size: int) -> None:
        with self._lock:
            for event in events:
                message_id = event.get("messageId")
                if not message_id:
                    self._generated += 1
                    message_id = event["messageId"] = f"standin-{self._generated}"
                if message_id not in self._seen:
                    self._seen[message_id] = event if self.record else None
            self.events_accepted += len(events)
            self.sizes.append((len(events), size))
        self._accept(*(events if self.record else ()))


def _events(body: Any, single: str | None) -> list[dict[str, Any]] | str:
    """The call's events, or why there are none."""
    if single is not None:
        if not isinstance(body, dict):
            return "the body must be a JSON object"
        return [{"type": single, **body}]
    batch = body.get("batch") if isinstance(body, dict) else None
    if not isinstance(batch, list):
        return "the body must be an object with a list under \"batch\""
    if len(batch) > MAX_BATCH_EVENTS:
        return f"a batch of {len(batch)} events is over the limit of {MAX_BATCH_EVENTS}"
    if not all(isinstance(event, dict) for event in batch):
        return "every event of the batch must be a JSON object"
    return batch


def _problem(events: list[dict[str, Any]], check_sizes: bool) -> str | None:
    """Why one event is refused (the first found), or None. A call that is itself within
    the event limit cannot hold a larger event, so sizes are checked only for bigger ones."""
    for index, event in enumerate(events):
        if event.get("type") not in EVENT_TYPES:
            return f"event {index}: unknown type {event.get('type')!r}"
        if not (event.get("userId") or event.get("anonymousId")):
            return f"event {index}: userId or anonymousId is required"
        if event["type"] == "track" and not (isinstance(event.get("event"), str) and event["event"]):
            return f"event {index}: a track event needs its name under \"event\""
        if check_sizes:
            size = len(json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode())
            if size > MAX_EVENT_BYTES:
                return f"event {index} of {size} bytes is over the limit of {MAX_EVENT_BYTES // 1024} KB"
    return None


def _error(message: str) -> dict[str, Any]:
    return {"success": False, "message": message}
