"""The Segment-compatible destination (issue 18) against the Segment stand-in over real HTTP:
batches of Identify (and Track) events, each change acknowledged once every event carrying it
is, a refused event narrowed down and failed alone, Segment's size limits, transient faults."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from syncd.config import DestinationConfig, Secret
from syncd.delivery.batches import CALL_OVERHEAD
from syncd.delivery.destinations import make_destination
from syncd.delivery.destinations.segment import track_message_id
from syncd.delivery.wire import json_bytes
from syncd.dev.standins import Fault, SegmentStandIn
from syncd.identify import identify
from syncd.model import Change, digest_id
from syncd.run.report import RunReport

from conftest import SEGMENT_KEY, Env, audience_toml

BUYERS = "SELECT id AS user_id, email FROM customers"
PRO = "SELECT id AS user_id, email FROM customers WHERE plan = 'pro'"


@pytest.fixture
def segment() -> Iterator[SegmentStandIn]:
    with SegmentStandIn(SEGMENT_KEY) as server:
        yield server


def cdp(segment: SegmentStandIn, batch_size: int = 500, events: str = '["identify"]') -> str:
    return (f'\n[destinations.cdp]\ntype = "segment"\nendpoint = "{segment.endpoint}"\n'
            f'api_key_env = "SEGMENT_WRITE_KEY"\ntimeout = "2s"\nbatch_size = {batch_size}\n'
            f'events = {events}\n')


def sync(env: Env, segment: SegmentStandIn, audiences: str | None = None, **settings: Any) -> RunReport:
    audiences = audiences or audience_toml("Buyers", ["cdp"], query=BUYERS, key="buyers")
    return env.run(env.config(extra=cdp(segment, **settings), audiences=audiences))


def identifies(segment: SegmentStandIn) -> list[dict[str, Any]]:
    return [e for e in segment.accepted() if e["type"] == "identify"]


def test_first_sync_in_batches_then_only_changes(env: Env, segment: SegmentStandIn) -> None:
    members = [f"u{i:04d}" for i in range(3000)]
    env.shop.members(*members)
    report = sync(env, segment)
    assert report.delivered
    calls = len(segment.sizes)
    assert calls <= 7 and report.calls["cdp"] == calls
    events = identifies(segment)
    assert sorted(e["userId"] for e in events) == members  # every member once
    assert all(e["traits"]["buyers"] is True and e["traits"]["email"] == f"{e['userId']}@example.com"
               for e in events)
    assert len({e["messageId"] for e in events}) == 3000
    assert all("integrations" not in e and e["context"]["personas"]["computation_key"] == "buyers"
               for e in events)

    segment.reset()
    env.shop.members(*members[5:], "n1", "n2")  # 5 leave, 2 enter
    report = sync(env, segment)
    assert report.delivered
    assert {(e["userId"], e["traits"]["buyers"]) for e in identifies(segment)} == {
        *((m, False) for m in members[:5]), ("n1", True), ("n2", True)}
    assert len(segment.sizes) == 2  # the enters, then the leaves

    segment.reset()
    assert sync(env, segment).delivered
    assert segment.requests == 0  # nothing changed: nothing sent


def test_one_identify_per_user_and_a_track_per_audience_change(sqlite_env: Env,
                                                               segment: SegmentStandIn) -> None:
    env = sqlite_env
    free = ("u2", "u2@example.com", "2026-11-20 10:00:00", None, None, "free")
    env.shop.set(("u1", "u1@example.com"), free)
    audiences = (audience_toml("Buyers", ["cdp"], query=BUYERS, key="buyers")
                 + audience_toml("Pro buyers", ["cdp"], query=PRO, key="pro_buyers"))
    assert sync(env, segment, audiences, events='["identify", "track"]').delivered
    u1 = [e for e in segment.accepted() if e["userId"] == "u1"]
    identify = [e for e in u1 if e["type"] == "identify"]
    assert len(identify) == 1 and identify[0]["traits"] == {
        "email": "u1@example.com", "buyers": True, "pro_buyers": True}
    tracks = sorted((e for e in u1 if e["type"] == "track"), key=lambda e: e["properties"]["audience_key"])
    assert [(e["event"], e["properties"]) for e in tracks] == [
        ("Audience Entered", {"audience_key": "buyers", "buyers": True}),
        ("Audience Entered", {"audience_key": "pro_buyers", "pro_buyers": True})]
    assert [e["context"]["personas"]["computation_key"] for e in tracks] == ["buyers", "pro_buyers"]
    ids = [e["messageId"] for e in segment.accepted()]
    assert len(ids) == len(set(ids)) == 2 + 3  # u1: identify + 2 tracks; u2: identify + 1 track

    segment.reset()
    env.shop.set(free)  # u1 leaves both
    assert sync(env, segment, audiences, events='["track"]').delivered
    assert sorted((e["type"], e["event"], e["properties"]["audience_key"]) for e in segment.accepted()) == [
        ("track", "Audience Exited", "buyers"), ("track", "Audience Exited", "pro_buyers")]


def test_a_refused_event_fails_alone_in_few_calls(sqlite_env: Env, segment: SegmentStandIn) -> None:
    env = sqlite_env
    members = [f"u{i:03d}" for i in range(500)]
    env.shop.members(*members)
    segment.refuse(user_id="u123")
    report = sync(env, segment)
    assert not report.delivered
    assert sorted(e["userId"] for e in identifies(segment)) == [m for m in members if m != "u123"]
    assert segment.requests <= 1 + 2 * 9  # halving 500 events down to one: O(log batch)
    [pair] = report.pairs
    assert (pair.acknowledged, pair.failed) == (499, 1)
    failures = env.cli("failures", "--config", "config.toml")
    assert "u123" in failures.stdout and "refused by this receiver" in failures.stdout

    segment.reset()
    segment.refuse(user_id="u123")
    assert not sync(env, segment).delivered  # retried next run, alone: one call
    assert segment.requests == 1 and not segment.accepted()


def test_a_call_is_its_events_json_joined_byte_for_byte_as_httpx_sends_the_whole() -> None:
    """Each event is serialised once (its parts for its messageId and its body; its size checked
    against the limits), and the call joins those bytes: the body must be exactly what httpx
    makes of the same events as `json=`, with the messageId the event's content gives it
    (the changes' id and, ASCII-escaped as ever, the parts a resend can change)."""
    destination = make_destination(DestinationConfig(
        "cdp", "segment", Secret("k"), None, 4, 10,
        {"endpoint": "https://api.segment.io/v1/batch", "batch_size": 500, "events": ("identify", "track")}))
    at = datetime(2026, 12, 5, 4, 0, tzinfo=UTC)
    zoe = Change(subject="u:zoë", user_id="zoë", anonymous_id=None, email="zoë@example.com", seq=0,
                 value=True, url="https://example.com/ü", traits={"note": "5 € \u2028 \"quoted\"", "n": 1.5,
                                                      "x": {"a": [1, True]}})
    anonymous = Change(subject="a:anon-1", user_id=None, anonymous_id="anon-1", email=None, seq=3,
                       value=False)
    raws, expected = [], []
    for change in (zoe, anonymous):
        message = identify(change, "buyers", "cdp", "Segment", at)
        events = destination.events(message, [("buyers", change)])
        raws += [raw for raw, _ in events]
        identify_event = {k: v for k, v in message.items() if k != "integrations" and v is not None}
        track = {k: v for k, v in json.loads(events[1][0]).items()}
        for event in (identify_event, track):
            context = event["context"]
            varying = (event.get("userId"), event.get("anonymousId"), event.get("traits"),
                       event.get("properties"), context["personas"], context.get("page"),
                       context.get("traits"))
            changes_id = message["messageId"] if event is identify_event else track_message_id(
                change.message_id("buyers", "cdp"))
            event["messageId"] = digest_id([changes_id, json.dumps(varying, separators=(",", ":"))])
            expected.append(event)
    request = destination.batch(raws, "2026-12-05T04:00:00.000Z")
    whole = httpx.Request("POST", request.url, json={"batch": expected, "sentAt": "2026-12-05T04:00:00.000Z"})
    assert request.content == whole.content
    assert [len(raw) for raw in raws] == [len(json_bytes(event)) for event in expected]
    measured = sum(len(raw) + 1 for raw in raws)  # as batches.py packs them
    assert measured < len(whole.content) <= measured + CALL_OVERHEAD


def test_an_event_over_32_kb_fails_alone_and_no_call_exceeds_500_kb(sqlite_env: Env,
                                                                    segment: SegmentStandIn) -> None:
    """A member whose Identify alone is over 32 KB is skipped at the snapshot (as for every
    destination); one whose audiences' extra traits add up to more in one Identify fails alone."""
    env = sqlite_env
    env.shop.members(*(f"u{i:03d}" for i in range(300)))
    with env.shop.connect() as db:
        db.execute("ALTER TABLE customers ADD COLUMN notes TEXT")
        db.execute("UPDATE customers SET notes = ?", ("y" * 3_000,))
        db.execute("UPDATE customers SET notes = ? WHERE id = 'u007'", ("x" * 20_000,))
        db.execute("UPDATE customers SET notes = ? WHERE id = 'u008'", ("x" * 40_000,))
    audiences = "".join(audience_toml(key.upper(), ["cdp"], key=key,
                                      query=f"SELECT id AS user_id, notes AS {key}_notes FROM customers")
                        for key in ("a", "b"))
    report = sync(env, segment, audiences)
    assert [(p.acknowledged, p.failed) for p in report.pairs] == [(298, 1), (298, 1)]
    assert [report.audiences[key].too_large for key in ("a", "b")] == [1, 1]
    assert {"u007", "u008"}.isdisjoint(e["userId"] for e in segment.accepted())
    assert all("u007" in (p.message or "") and "over the limit of 32768 bytes" in (p.message or "")
               for p in report.pairs)
    assert max(size for _, size in segment.sizes) <= 500_000
    assert len(segment.sizes) >= 4  # 298 events of ~6 KB: at least 4 calls of 500 KB


def test_429_and_5xx_bursts_converge_with_the_same_message_ids(sqlite_env: Env,
                                                               segment: SegmentStandIn) -> None:
    env = sqlite_env
    env.shop.members(*(f"u{i:03d}" for i in range(200)))
    segment.fail_next(1, Fault(429, retry_after="1"))
    segment.fail_next(2, Fault(503))
    report = sync(env, segment, batch_size=50)
    assert report.delivered and segment.duplicates == 0
    assert len(segment.deduplicated()) == 200

    # Calls applied but answered after the 2 s timeout: sent again, in this run and the next,
    # always with the same messageIds (the receiver keeps one of each).
    env.shop.members(*(f"u{i:03d}" for i in range(100)))
    segment.delay = 3.0
    assert not sync(env, segment, batch_size=50).delivered
    segment.heal()
    assert sync(env, segment, batch_size=50).delivered
    exits = [e for e in identifies(segment) if e["traits"]["buyers"] is False]
    assert len(exits) > 100 and len({e["messageId"] for e in exits}) == 100
    kept = [e for e in segment.deduplicated().values() if e and e["traits"]["buyers"] is False]
    assert sorted(e["userId"] for e in kept) == [f"u{i:03d}" for i in range(100, 200)]


def test_a_change_sent_again_with_a_new_email_is_a_new_event(sqlite_env: Env,
                                                             segment: SegmentStandIn) -> None:
    """A change applied but answered late is sent again next run: with the same content, under
    the same messageIds (the receiver drops them); with the member's new email, under new ones,
    else the receiver would drop the new email as a duplicate (found by test_convergence)."""
    env = sqlite_env
    env.shop.set(("u1", "u1@example.com"), ("u2", "u2@example.com"))
    config = env.config(extra=cdp(segment, events='["identify", "track"]'),
                        audiences=audience_toml("Buyers", ["cdp"], query=BUYERS, key="buyers"))
    late = replace(config, destinations={**config.destinations,
                                         "cdp": replace(config.destinations["cdp"], timeout=0.2)})
    segment.delay = 0.5  # applied, answered after the timeout
    assert not env.run(late).delivered
    segment.heal()
    first = {(e["userId"], e["type"]): e["messageId"] for e in segment.accepted()}
    env.shop.set(("u1", "u1@new.example.com"), ("u2", "u2@example.com"))
    assert env.run(config).delivered
    again = {(e["userId"], e["type"]): e["messageId"] for e in segment.accepted()[-4:]}
    for kind in ("identify", "track"):
        assert again[("u2", kind)] == first[("u2", kind)] and again[("u1", kind)] != first[("u1", kind)]
    u1 = [e for e in segment.deduplicated().values() if e and e["userId"] == "u1" and e["type"] == "identify"]
    assert u1[-1]["traits"]["email"] == "u1@new.example.com"


def test_a_revoked_key_stops_the_destination(sqlite_env: Env, segment: SegmentStandIn) -> None:
    env = sqlite_env
    env.shop.members("u1")
    config = env.config(extra=cdp(segment), audiences=audience_toml("Buyers", ["cdp"], query=BUYERS),
                        keys={"SEGMENT_WRITE_KEY": "not-the-key"})
    report = env.run(config)
    [pair] = report.pairs
    assert pair.outcome == "stopped" and "refused the API key" in (pair.message or "")
    assert segment.requests == 1


def test_check_connect_sends_no_event(sqlite_env: Env, segment: SegmentStandIn) -> None:
    env = sqlite_env
    env.write_config(extra=cdp(segment), audiences=audience_toml("Buyers", ["cdp"], query=BUYERS))
    result = env.cli("check", "--connect", "--json", "--config", "config.toml")
    assert result.returncode == 0, result.stdout + result.stderr
    [found] = [c for c in json.loads(result.stdout) if c.get("destination") == "cdp"]
    assert found["ok"] and "refused as expected" in found["message"]
    assert segment.requests == 1 and not segment.accepted()


def test_plan_counts_batches(sqlite_env: Env, segment: SegmentStandIn) -> None:
    env = sqlite_env
    env.shop.members(*(f"u{i:04d}" for i in range(1200)))
    env.write_config(extra=cdp(segment, batch_size=250, events='["identify", "track"]'),
                     audiences=audience_toml("Buyers", ["cdp"], query=BUYERS))
    result = env.cli("plan", "--json", "--config", "config.toml")
    assert result.returncode == 0, result.stderr
    [dest] = [d for d in json.loads(result.stdout)["destinations"] if d["destination"] == "cdp"]
    # 1,200 Identify + 1,200 Track, 250 per call
    assert (dest["calls"], dest["by_kind"]) == (10, {"batches": 10})


@pytest.mark.parametrize(("setting", "message"), [
    ("batch_size = 3000", "destinations.cdp.batch_size"),
    ('events = ["page"]', "unknown value 'page'"),
])
def test_bad_settings_are_one_line(sqlite_env: Env, segment: SegmentStandIn, setting: str,
                                   message: str) -> None:
    env = sqlite_env
    settings = cdp(segment).replace("batch_size = 500\n", "").replace('events = ["identify"]\n', "")
    env.write_config(extra=settings + setting + "\n",
                     audiences=audience_toml("Buyers", ["cdp"], query=BUYERS))
    result = env.cli("check", "--config", "config.toml")
    assert result.returncode == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_a_write_key_given_as_the_whole_header_value_is_sent_as_it_is(sqlite_env: Env,
                                                                       segment: SegmentStandIn) -> None:
    """Dittofeed shows its write key as the header value (`Basic …`)."""
    env = sqlite_env
    env.shop.members("u1")
    header = "Basic " + base64.b64encode(f"{SEGMENT_KEY}:".encode()).decode()
    config = env.config(extra=cdp(segment), audiences=audience_toml("Buyers", ["cdp"], query=BUYERS),
                        keys={"SEGMENT_WRITE_KEY": header})
    assert env.run(config).delivered and [e["userId"] for e in segment.accepted()] == ["u1"]
