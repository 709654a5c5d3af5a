"""User.com: the public REST API (users/update_or_create/, attributes/,
users/mass_update_custom_attributes/ for users whose internal id syncd has learned, and
users/ listing every user with its id, to learn many ids at once)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from syncd.config import Address, DestinationConfig, Number
from syncd.delivery.destinations.base import IDENTITY_FIELDS, Destination, Listed
from syncd.delivery.wire import Answer, Probe, Request, Verdict
from syncd.errors import DestinationConflict, DestinationError
from syncd.estimate import CallEstimate, Workload, chunks, listing_pages, merged

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
    bulk_paths = frozenset({"mass_updates", "listing"})
    listing_page_size = 100  # the most GET users/ gives per page

    def __init__(self, config: DestinationConfig) -> None:
        super().__init__(config)
        self._attributes: dict[str, Any] | None = None  # name -> value_type, listed once a run

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

    def blames_attribute(self, body: Any) -> bool:
        """User.com validates a mass update like a serializer: field errors by field name."""
        return isinstance(body, dict) and ("attribute" in body or "value" in body)

    def list_users(self, cursor: str | None) -> Request:
        """Cursor pages in User.com's order; the cursor is the query of the `next` link, sent to
        base_url itself (never to whatever host a link names: the request carries the key)."""
        query = cursor or f"page_size={self.listing_page_size}"
        return Request("GET", f"{self.config.url}users/?{query}")

    def listed(self, body: Any) -> Listed:
        """`count`, `next`, `results` with each user's `id` and custom id (`custom_id`, or
        `user_id` in some API versions; users without one are left out)."""
        results = body.get("results") if isinstance(body, dict) else None
        if not isinstance(body, dict) or type(body.get("count")) is not int or not isinstance(results, list):
            raise ValueError("the answer is not a page of users (count, results)")
        ids = {}
        for user in results:
            if not isinstance(user, dict) or type(user.get("id")) is not int:
                continue
            custom_id = user.get("custom_id") or user.get("user_id")
            if isinstance(custom_id, (str, int)) and not isinstance(custom_id, bool) and str(custom_id):
                ids[str(custom_id)] = user["id"]
        link = body.get("next")
        cursor = urlsplit(link).query or None if isinstance(link, str) and link else None
        return Listed(body["count"], len(results), ids, cursor)

    def estimate(self, work: Workload) -> CallEstimate:
        """Mass updates for the plain users of known id, one call for each other user; and when
        a listing pays, its pages, and the plain users of unknown id in mass updates too."""
        size = self.bulk_size or 1
        pages = listing_pages(work, self.listing_page_size, size)
        if pages is None:
            return CallEstimate((("mass_updates", chunks(work.known_changes.values(), size)),
                                 ("user_calls", work.users - work.plain_known)))
        found = merged(work.known_changes, work.unknown_changes)
        rest = work.users - work.plain_known - work.plain_unknown
        parts = (("id_listing", pages), ("mass_updates", chunks(found.values(), size)), ("user_calls", rest))
        return CallEstimate(parts, f"if User.com has the {work.plain_unknown} users of unknown id (the "
                                   "listing finds them); one more call for each it does not have")

    async def prepare(self, sender: Sender, audience_key: str) -> None:
        """Make sure a *boolean* attribute exists, or User.com would store the trait as text
        (and makes one it does not have from a user's own call as text: delivery checks again
        in every run with such calls). The attributes are listed once a run (this instance
        lives for one run) for all its audiences."""
        if self._attributes is None:
            self._attributes = await self._list_attributes(sender)
        value_type = self._attributes.get(audience_key)
        if value_type == "boolean":
            return
        if value_type is not None:
            raise DestinationConflict(f"User.com attribute {audience_key!r} exists with type {value_type!r}, "
                                      "not boolean: change or delete it")
        attribute = {"name": audience_key, "value_type": "boolean", "content_type": "clientuser"}
        result = await sender.call(Request("POST", self.config.url + "attributes/", attribute))
        _checked(result.verdict, result.error, result.body, f"creating attribute {audience_key!r}")
        self._attributes[audience_key] = "boolean"

    async def check_again(self, sender: Sender, audience_key: str) -> None:
        """A mass update was refused for the attribute: list them afresh."""
        self._attributes = None
        await self.prepare(sender, audience_key)

    async def _list_attributes(self, sender: Sender) -> dict[str, Any]:
        """Every attribute's type, by name and standard name."""
        found: dict[str, Any] = {}
        url: str | None = self.config.url + "attributes/"
        while url:
            result = await sender.call(Request("GET", url))
            body = _checked(result.verdict, result.error, result.body, "listing attributes")
            if not isinstance(body, dict):
                raise DestinationError("listing attributes failed: the answer was not JSON "
                                       f"(HTTP {result.status}); is base_url the API's address?")
            for attribute in body.get("results", []):
                for name in (attribute.get("name"), attribute.get("name_std")):
                    found.setdefault(name, attribute.get("value_type"))
            url = body.get("next")
        return found


def _checked(verdict: Verdict | None, error: str | None, body: Any, doing: str) -> Any:
    if verdict is not Verdict.ACK:
        raise DestinationError(f"{doing} failed: {error or 'not attempted'}")
    return body
