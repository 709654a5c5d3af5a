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
