"""Nat (nat.app): Segment-format Identify events, POSTed to the endpoint Nat gives."""

from __future__ import annotations

from typing import Any

from syncd.config import Address
from syncd.delivery.destinations.base import Destination, basic_auth
from syncd.delivery.wire import Request


class Nat(Destination):
    type = "nat"
    integration = "Nat"
    settings = (Address("endpoint"),)
    rate_limit = 20.0
    concurrency = 8
    needs_email = True  # Nat keeps contacts by email and refuses an Identify without traits.email

    def headers(self) -> dict[str, str]:
        return {"Authorization": basic_auth(self.config.resolved_key.reveal())}

    def request(self, message: dict[str, Any], audience_key: str) -> Request:
        page = message["context"].get("page")
        if page:  # Nat shows page.url as the timeline entry's description
            message = {**message, "page": page}
        return Request("POST", self.config.url, message)
