"""User.com: the public REST API (users/update_or_create/, attributes/, and
users/mass_update_custom_attributes/ for users whose internal id syncd has learned)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from syncd.delivery.destinations.base import Destination
from syncd.delivery.destinations.facts import USERCOM
from syncd.delivery.sender import Request, Sender, Verdict
from syncd.errors import DestinationError


class UserCom(Destination):
    facts = USERCOM

    def headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Token {self.config.resolved_key.reveal()}",
            "Accept": "*/*; version=2",
        }

    def request(self, message: dict[str, Any], audience_key: str) -> Request:
        traits = message["traits"]
        body: dict[str, Any] = {"custom_id": message["userId"] or message["anonymousId"]}
        body.update(traits)
        return Request("POST", self.config.url + "users/update_or_create/", body)

    def remote_id(self, answer: Any) -> int | None:
        """update_or_create answers with the user, its internal `id` included."""
        remote_id = answer.get("id") if isinstance(answer, dict) else None
        return remote_id if type(remote_id) is int else None

    def mass_update(self, audience_key: str, value: bool, ids: Sequence[int]) -> Request:
        """All or nothing: one unknown id and User.com refuses the whole request (400)."""
        body = {"ids": list(ids), "attribute": audience_key, "value": value}
        return Request("PUT", self.config.url + "users/mass_update_custom_attributes/", body)

    async def prepare(self, sender: Sender, audience_key: str) -> None:
        """Make sure a *boolean* attribute exists, or User.com would store the trait as text."""
        url: str | None = self.config.url + "attributes/"
        while url:
            result = await sender.call(Request("GET", url))
            body = _checked(result.verdict, result.error, result.body, "listing attributes")
            if not isinstance(body, dict):
                raise DestinationError("listing attributes failed: the answer was not JSON "
                                       f"(HTTP {result.status}); is base_url the API's address?")
            for attribute in body.get("results", []):
                if audience_key in (attribute.get("name_std"), attribute.get("name")):
                    if attribute.get("value_type") != "boolean":
                        raise DestinationError(
                            f"User.com attribute {audience_key!r} exists with type "
                            f"{attribute.get('value_type')!r}, not boolean: change or delete it"
                        )
                    return
            url = body.get("next")
        attribute = {"name": audience_key, "value_type": "boolean", "content_type": "clientuser"}
        result = await sender.call(Request("POST", self.config.url + "attributes/", attribute))
        _checked(result.verdict, result.error, result.body, f"creating attribute {audience_key!r}")


def _checked(verdict: Verdict | None, error: str | None, body: Any, doing: str) -> Any:
    if verdict is not Verdict.ACK:
        raise DestinationError(f"{doing} failed: {error or 'not attempted'}")
    return body
