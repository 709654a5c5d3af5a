"""User.com: the public REST API (users/update_or_create/, attributes/, and
users/mass_update_custom_attributes/ for users whose internal id syncd has learned)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from syncd.config import Address, Number
from syncd.delivery.destinations.base import IDENTITY_FIELDS, Destination
from syncd.delivery.wire import Answer, Probe, Request, Verdict
from syncd.errors import DestinationError

if TYPE_CHECKING:
    from syncd.delivery.sender import Sender

# User.com's standard user attributes (mapped from Identify traits and context): a trait of
# that name would overwrite one.
STANDARD_FIELDS = frozenset({
    "first_name", "last_name", "phone", "gender", "address", "country", "region", "city",
    "user_agent", "os", "device_name", "device_type", "language", "resolution", "ip_address",
    "browser_family", "browser_version", "timezone", "current_url",
})


class UserCom(Destination):
    type = "usercom"
    integration = "User.com"
    # bulk_size is conservative: User.com documents no limit on ids per call.
    settings = (Address("base_url", base=True), Number("bulk_size", int, 100, (1, 1000)))
    rate_limit = 10.0
    concurrency = 4
    reserved = IDENTITY_FIELDS | {"custom_id", "id"} | STANDARD_FIELDS  # custom_id: how it keys users
    key_limit = 32  # the key names an attribute: User.com takes names of up to 32 characters

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

    def probe(self, call: Callable[[Request], Answer]) -> Probe:
        """Listing attributes changes nothing and needs the key: a refused key shows."""
        answer = call(Request("GET", self.config.url + "attributes/"))
        if answer.status in (401, 403):
            return Probe(False, f"User.com refused the API key ({answer.reason})")
        if not answer.ok:
            return Probe(False, f"listing attributes answered {answer.reason}")
        if not isinstance(answer.body, dict):
            return Probe(False, f"the answer was not JSON (HTTP {answer.status}); is base_url the "
                                "API's address?")
        return Probe(True, "reachable; the API key is accepted (listed attributes)")

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
