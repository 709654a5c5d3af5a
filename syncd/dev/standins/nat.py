"""Nat: Segment-format Identify calls, one per request, at /segment."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from syncd.dev.standins.base import Reply, StandIn, basic_auth


class NatStandIn(StandIn):
    """Nat: Segment-format Identify calls at /segment, Basic auth with the key as user."""

    name = "Nat"

    @property
    def service_url(self) -> str:
        return self.endpoint

    @property
    def endpoint(self) -> str:
        return self.url + "/segment"

    def route(self, method: str, path: str, headers: dict[str, str], body: Any) -> Reply:
        if urlsplit(path).path != "/segment":
            return 404, {"error": "not found"}, {}
        if method != "POST":
            return 405, {"error": "method not allowed"}, {}
        if headers.get("Authorization") != basic_auth(self.api_key):
            return 401, {"error": "invalid api key"}, {}
        problem = _nat_problem(body)
        if problem:
            return 400, {"error": problem}, {}
        self._accept(body)
        return 200, {"success": True}, {}

    def contacts(self) -> dict[str, dict[str, Any]]:
        """What Nat holds: per email, the traits of every accepted call merged in order."""
        result: dict[str, dict[str, Any]] = {}
        for call in self.accepted():
            traits = call.get("traits") or {}
            email = str(traits.get("email") or call.get("email"))
            result.setdefault(email, {}).update(traits)
        return result


def _nat_problem(body: Any) -> str | None:
    if not isinstance(body, dict) or body.get("type") != "identify":
        return "only identify calls are accepted"
    traits: dict[str, Any] = body["traits"] if isinstance(body.get("traits"), dict) else {}
    email = traits.get("email") or body.get("email")
    if not email:
        return "email is required"
    if not isinstance(email, str) or "@" not in email:
        return "email is not valid"
    timestamp = body.get("timestamp")
    try:
        datetime.fromisoformat(str(timestamp).replace("Z", "+00:00"))
    except ValueError:
        return "timestamp is required"
    return None
