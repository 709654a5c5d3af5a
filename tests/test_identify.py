"""Golden files: the exact JSON each destination receives for an enter and a leave.

To update after a deliberate wire change: SYNCD_UPDATE_GOLDEN=1 pytest tests/test_identify.py,
then review the diff of tests/golden/ like any other code change.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from syncd.config import DestinationConfig, Secret
from syncd.delivery.destinations import make_destination
from syncd.identify import identify
from syncd.model import Change
from syncd.render import iso_millis

GOLDEN = Path(__file__).parent / "golden"
AT = datetime(2026, 11, 22, 9, 0, 0, 123456, tzinfo=UTC)
KEY = "order_completed_last_30days"

ENTER = Change(subject="u:u_123", user_id="u_123", anonymous_id=None, email="peter@example.com",
               seq=0, value=True, url="https://example.com/account",
               traits={"plan": "pro", "lifetime_value": 1250.5})
LEAVE = Change(subject="u:u_123", user_id="u_123", anonymous_id=None, email="peter@example.com",
               seq=1, value=False)
ANONYMOUS = Change(subject="a:anon-9", user_id=None, anonymous_id="anon-9", email=None, seq=0, value=True)

DESTINATIONS = {
    "nat": DestinationConfig("nat", "nat", Secret("k"), None, 8, 10, {"endpoint": "https://nat.example/segment"}),
    "usercom": DestinationConfig("usercom", "usercom", Secret("k"), None, 8, 10,
                                 {"base_url": "https://app.user.com/api/public/"}),
    "segment": DestinationConfig("segment", "segment", Secret("k"), None, 8, 10,
                                 {"endpoint": "https://api.segment.io/v1/batch", "batch_size": 500,
                                  "events": ("identify", "track")}),
}


def wire(name: str, change: Change) -> dict[str, object]:
    destination = make_destination(DESTINATIONS[name])
    message = identify(change, KEY, name, destination.integration, AT)
    request = destination.request(message, KEY)
    if "batches" in destination.bulk_paths:  # the user's events, as delivery batches them
        events = [raw for raw, _ in destination.events(message, [(KEY, change)])]
        request = destination.batch(events, iso_millis(AT))
    body = json.loads(request.content) if request.content is not None else request.body
    return {"method": request.method, "url": request.url, "body": body}


CASES = [("nat", "enter", ENTER), ("nat", "leave", LEAVE),
         ("usercom", "enter", ENTER), ("usercom", "leave", LEAVE), ("usercom", "anonymous", ANONYMOUS),
         ("segment", "enter", ENTER), ("segment", "leave", LEAVE), ("segment", "anonymous", ANONYMOUS)]


@pytest.mark.parametrize(("name", "case", "change"), CASES, ids=[f"{n}-{c}" for n, c, _ in CASES])
def test_wire_format_matches_golden_file(name: str, case: str, change: Change) -> None:
    path = GOLDEN / f"{name}_{case}.json"
    actual = wire(name, change)
    if os.environ.get("SYNCD_UPDATE_GOLDEN"):
        path.write_text(json.dumps(actual, indent=2, sort_keys=True) + "\n")
    assert actual == json.loads(path.read_text())


def test_timestamps_are_utc_with_milliseconds_and_z() -> None:
    assert iso_millis(AT) == "2026-11-22T09:00:00.123Z"


def test_message_id_is_stable_per_change_and_new_for_the_next_change() -> None:
    assert ENTER.message_id(KEY, "nat") == ENTER.message_id(KEY, "nat")
    assert ENTER.message_id(KEY, "nat") != ENTER.message_id(KEY, "usercom")
    assert ENTER.message_id(KEY, "nat") != LEAVE.message_id(KEY, "nat")
    re_enter = Change(**{**ENTER.__dict__, "seq": 2})
    assert re_enter.message_id(KEY, "nat") != ENTER.message_id(KEY, "nat")
