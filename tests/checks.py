"""What a destination ended up with, and the delivery rules every fault test checks."""

from __future__ import annotations

from typing import Any

from syncd.dev.standins import UserComStandIn


def flags(calls: list[dict[str, Any]], key: str = "buyers") -> dict[str, bool]:
    """userId/custom_id -> the audience flag, in arrival order (later wins)."""
    out = {}
    for call in calls:
        traits = call.get("traits", call)
        if key in traits:  # not User.com's attribute creation
            out[call.get("userId") or call.get("custom_id")] = traits[key]
    return out


def view(calls: list[dict[str, Any]], universe: set[str], key: str = "buyers") -> set[str]:
    """The users the destination holds as members (a user it never heard of is not one)."""
    held = flags(calls, key)
    return {user for user in universe if held.get(user) is True}


def usercom_view(usercom: UserComStandIn, universe: set[str], key: str = "buyers") -> set[str]:
    """The users User.com holds as members, from its own records: a value can arrive in a
    call of the user's own or in a mass update naming the user's internal id."""
    held = {user: data["attributes"].get(key) for user, data in usercom.users().items()}
    return {user for user in universe if held.get(user) is True}


def assert_no_stale_values(calls: list[dict[str, Any]]) -> None:
    """A re-send after a crash or a timeout repeats the same message (same messageId, same
    value); once a newer message arrived for a user's record (the user at that email: Nat
    keeps a contact per email), an older one never arrives again."""
    values: dict[str, bool] = {}
    history: dict[tuple[Any, Any], list[str]] = {}
    for call in calls:
        message_id = call["messageId"]
        user = (call.get("userId") or call.get("anonymousId"), (call.get("traits") or {}).get("email"))
        value = next(v for k, v in call["traits"].items() if isinstance(v, bool))
        assert values.setdefault(message_id, value) == value, f"{message_id} carried two values"
        seen = history.setdefault(user, [])
        if seen and seen[-1] == message_id:
            continue  # the same change again: the destination deduplicates it
        assert message_id not in seen, f"{user}: a stale change arrived after a newer one"
        seen.append(message_id)


def assert_message_ids_unique(calls: list[dict[str, Any]]) -> None:
    """A messageId is never reused for different content: each one always carries the same
    user, email and audience values (a retry repeats it exactly; anything else is new)."""
    contents: dict[str, tuple[Any, ...]] = {}
    for call in calls:
        traits = call.get("traits") or {}
        content = (call.get("userId"), call.get("anonymousId"), traits.get("email"),
                   tuple(sorted((k, v) for k, v in traits.items() if isinstance(v, bool))))
        assert contents.setdefault(call["messageId"], content) == content, \
            f"{call['messageId']} was sent with {contents[call['messageId']]} and with {content}"


def nat_flags(contacts: dict[str, dict[str, Any]], key: str = "buyers") -> dict[str, Any]:
    """Nat's contacts (per email, as Nat keys them) -> the audience flag each holds."""
    return {email: traits[key] for email, traits in contacts.items() if key in traits}


def assert_duplicates_identical(events: list[dict[str, Any]],
                                ignore: tuple[str, ...] = ("timestamp",)) -> None:
    """Every event sent again under a messageId is the first one to the letter (but `ignore`:
    a resend in a later run is stamped with that run's snapshot): a receiver deduplicating
    by messageId drops it, so any other content would be lost."""
    first: dict[str, dict[str, Any]] = {}
    for event in events:
        content = {k: v for k, v in event.items() if k not in ignore}
        assert first.setdefault(event["messageId"], content) == content, \
            f"{event['messageId']} was sent as {first[event['messageId']]} and as {content}"


def assert_no_stale_tracks(events: list[dict[str, Any]]) -> None:
    """A Track carries one change of one audience: once a newer one arrived for (user,
    audience), an older one never arrives again (a repeat of the latest is its resend)."""
    history: dict[tuple[Any, Any], list[str]] = {}
    for event in events:
        if event["type"] != "track":
            continue
        seen = history.setdefault((event["userId"], event["properties"]["audience_key"]), [])
        if seen and seen[-1] == event["messageId"]:
            continue
        assert event["messageId"] not in seen, f"{event['userId']}: a stale Track arrived after a newer one"
        seen.append(event["messageId"])


def segment_held(events: dict[str, dict[str, Any] | None]) -> tuple[dict[tuple[str, str], bool], ...]:
    """A Segment receiver's deduplicated events (SegmentStandIn.deduplicated()) replayed in
    order: per (userId, audience key), the last Identify trait and the last Track's value
    (Audience Entered: true), each Track's name checked against its property."""
    identified: dict[tuple[str, str], bool] = {}
    tracked: dict[tuple[str, str], bool] = {}
    for event in filter(None, events.values()):
        if event["type"] == "identify":
            identified.update({(event["userId"], k): v for k, v in event["traits"].items()
                               if isinstance(v, bool)})
            continue
        key = event["properties"]["audience_key"]
        value = event["properties"][key]
        assert event["event"] == ("Audience Entered" if value else "Audience Exited"), event
        tracked[(event["userId"], key)] = value
    return identified, tracked
