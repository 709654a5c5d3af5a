"""The Segment HTTP Tracking API stand-in, over real HTTP: write-key auth, Segment's size
limits, a refused event, faults, and the record of what it accepted."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from syncd.dev.standins import Fault, SegmentStandIn, basic_auth
from syncd.dev.standins.segment import MAX_BATCH_EVENTS, MAX_CALL_BYTES, MAX_EVENT_BYTES
from syncd.identify import identify
from syncd.model import Enter

WRITE_KEY = "segment-test-key-SECRET-5d6e"
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def segment() -> Iterator[SegmentStandIn]:
    with SegmentStandIn(WRITE_KEY) as server:
        yield server


@pytest.fixture
def client(segment: SegmentStandIn) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=segment.url, headers={"Authorization": basic_auth(WRITE_KEY)},
                      timeout=10.0) as http:
        yield http


def events(count: int, start: int = 0, **traits: Any) -> list[dict[str, Any]]:
    """Identify events as syncd makes them."""
    at = datetime(2026, 11, 22, 9, tzinfo=UTC)
    made = [identify(Enter(subject=f"u:{i}", user_id=f"u{i}", anonymous_id=None, email=None, seq=0,
                           traits=traits), "buyers", "cdp", "Segment", at)
            for i in range(start, start + count)]
    return made


def batch(client: httpx.Client, items: list[dict[str, Any]]) -> httpx.Response:
    return client.post("/v1/batch", json={"batch": items, "sentAt": "2026-11-22T09:00:00.000Z"})


def test_a_batch_is_accepted_whole_and_recorded_in_order(segment: SegmentStandIn,
                                                         client: httpx.Client) -> None:
    first, second = events(3), events(2, start=3)
    for items in (first, second):
        answer = batch(client, items)
        assert (answer.status_code, answer.json()) == (200, {"success": True})
    assert segment.accepted() == first + second
    assert [n for n, _ in segment.sizes] == [3, 2] and segment.accepted_calls == 2
    assert segment.events_accepted == 5 and segment.duplicates == 0
    assert httpx.get(segment.url + "/_standin/received").json() == first + second


@pytest.mark.parametrize("header", [None, basic_auth("wrong"), f"Token {WRITE_KEY}",
                                    basic_auth(WRITE_KEY).replace("Basic", "Bearer")])
def test_the_write_key_is_required(segment: SegmentStandIn, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    answer = httpx.post(segment.endpoint, json={"batch": events(1)}, headers=headers)
    assert answer.status_code == 401 and answer.json()["success"] is False
    assert segment.accepted() == []


def test_a_call_over_500_kb_is_refused(segment: SegmentStandIn, client: httpx.Client) -> None:
    items = events(40, filler="x" * 13_000)  # 40 events of ~13 KB: ~520 KB
    body = json.dumps({"batch": items}).encode()
    assert len(body) > MAX_CALL_BYTES
    answer = client.post("/v1/batch", content=body, headers=JSON)
    assert answer.status_code == 400 and "500 KB" in answer.json()["message"]
    assert batch(client, items[:35]).status_code == 200  # ~455 KB is fine
    assert segment.events_accepted == 35


def test_an_event_over_32_kb_is_refused_with_its_index(segment: SegmentStandIn,
                                                       client: httpx.Client) -> None:
    big = events(1, start=9, filler="x" * MAX_EVENT_BYTES)
    answer = batch(client, [*events(2), *big])
    assert answer.status_code == 400
    assert answer.json()["message"].startswith("event 2 of ") and "32 KB" in answer.json()["message"]
    single = client.post("/v1/identify", json=big[0])
    assert single.status_code == 400 and "32 KB" in single.json()["message"]
    assert segment.accepted() == []


def test_at_most_2500_events_per_batch(segment: SegmentStandIn, client: httpx.Client) -> None:
    items = [{"type": "identify", "userId": str(i)} for i in range(MAX_BATCH_EVENTS + 1)]
    answer = batch(client, items)
    assert answer.status_code == 400 and "2500" in answer.json()["message"]
    assert batch(client, items[:MAX_BATCH_EVENTS]).status_code == 200
    assert segment.events_accepted == MAX_BATCH_EVENTS


@pytest.mark.parametrize("body", [b'{"batch": [', b"not json", b'{"batch": {}}', b'[{"type": "identify"}]',
                                  b'{"batch": [1, 2]}', b'{"sentAt": "2026-11-22"}'])
def test_a_malformed_body_is_400(segment: SegmentStandIn, client: httpx.Client, body: bytes) -> None:
    answer = client.post("/v1/batch", content=body, headers=JSON)
    assert answer.status_code == 400 and answer.json()["message"]
    assert segment.accepted() == []


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_a_body_not_declared_json_is_400(segment: SegmentStandIn, client: httpx.Client,
                                         content_type: str | None) -> None:
    body = json.dumps({"batch": events(1)}).encode()
    headers = {"Content-Type": content_type} if content_type else {}
    answer = client.post("/v1/batch", content=body, headers=headers)
    assert answer.status_code == 400 and "Content-Type must be application/json" in answer.json()["message"]
    assert client.post("/v1/batch", content=body, headers={"Content-Type": "application/json; charset=utf-8"}
                       ).status_code == 200
    assert segment.events_accepted == 1


@pytest.mark.parametrize(("event", "reason"), [
    ({"type": "identify", "traits": {}}, "userId or anonymousId is required"),
    ({"type": "track", "userId": "u1"}, "a track event needs its name"),
    ({"type": "shout", "userId": "u1"}, "unknown type 'shout'"),
])
def test_an_event_segment_would_drop_is_refused_by_index(segment: SegmentStandIn, client: httpx.Client,
                                                         event: dict[str, Any], reason: str) -> None:
    answer = batch(client, [*events(1), event])
    assert answer.status_code == 400 and answer.json()["message"].startswith(f"event 1: {reason}")


def test_single_identify_and_track_calls(segment: SegmentStandIn, client: httpx.Client) -> None:
    assert client.post("/v1/identify", json={"userId": "u1", "traits": {"buyers": True}}).status_code == 200
    track = {"userId": "u1", "event": "Audience Entered", "properties": {"audience_key": "buyers"}}
    assert client.post("/v1/track", json=track).status_code == 200
    assert [e["type"] for e in segment.accepted()] == ["identify", "track"]
    assert client.post("/v1/page", json={"userId": "u1"}).status_code == 404
    assert client.get("/v1/batch").status_code == 405


def test_a_refused_event_refuses_its_whole_batch(segment: SegmentStandIn, client: httpx.Client) -> None:
    items = events(8)
    segment.refuse(user_id="u5")
    answer = batch(client, items)
    assert answer.status_code == 400 and "userId u5" in answer.json()["message"]
    assert batch(client, items[:5]).status_code == 200 and batch(client, items[6:]).status_code == 200
    segment.refuse(message_id=items[1]["messageId"])
    assert batch(client, items[:2]).status_code == 400
    assert [e["userId"] for e in segment.accepted()] == ["u0", "u1", "u2", "u3", "u4", "u6", "u7"]
    segment.heal()  # the receiver takes them again
    assert batch(client, items).status_code == 200 and segment.events_accepted == 15


def test_duplicates_are_kept_and_counted_by_message_id(segment: SegmentStandIn,
                                                       client: httpx.Client) -> None:
    items = events(3)
    batch(client, items)
    batch(client, items[1:])  # a call re-sent after a crash: the same messageIds
    batch(client, [{"type": "identify", "userId": "anon-1"}])  # no messageId: it gets one
    assert segment.events_accepted == 6 and len(segment.accepted()) == 6
    assert segment.duplicates == 2
    unique = segment.deduplicated()
    assert list(unique)[:3] == [e["messageId"] for e in items] and len(unique) == 4
    assert unique[items[1]["messageId"]] == items[1]


def test_429_and_5xx_faults_record_nothing(segment: SegmentStandIn, client: httpx.Client) -> None:
    segment.fail_next(1, Fault(429, retry_after="7"))
    segment.fail_next(1, Fault(503))
    limited = batch(client, events(2))
    assert (limited.status_code, limited.headers["Retry-After"]) == (429, "7")
    assert batch(client, events(2)).status_code == 503
    assert segment.accepted() == [] and segment.requests == 2
    segment.rate_limit = 0.001  # an empty bucket that fills in 1,000 s: the next call is over it
    refused = batch(client, events(2))
    assert (refused.status_code, refused.headers["Retry-After"]) == (429, "1")
    assert segment.rate_limited == 1 and segment.accepted() == []


def test_counting_only_mode_keeps_counts_not_events() -> None:
    with SegmentStandIn(WRITE_KEY, record=False) as segment:
        headers = {"Authorization": basic_auth(WRITE_KEY)}
        for _ in range(2):
            assert httpx.post(segment.endpoint, json={"batch": events(4)}, headers=headers).status_code == 200
        assert segment.accepted() == [] and segment.events_accepted == 8
        assert segment.duplicates == 4 and len(segment.deduplicated()) == 4
