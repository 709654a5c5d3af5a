"""The small interface every destination implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

from syncd.config import DestinationConfig
from syncd.delivery.destinations.facts import Facts
from syncd.delivery.sender import Request, Sender


class Destination(ABC):
    facts: ClassVar[Facts]  # its type, defaults and needs (facts.py)

    def __init__(self, config: DestinationConfig) -> None:
        self.config = config
        self.name = config.name

    @property
    def integration(self) -> str:
        """The name in Segment's `integrations` object."""
        return self.facts.integration

    @property
    def needs_email(self) -> bool:
        return self.facts.needs_email

    @abstractmethod
    def headers(self) -> dict[str, str]:
        """Authentication and protocol headers sent with every request."""

    def secrets(self) -> tuple[str, ...]:
        """Every form of the key that could be echoed back: redacted from error texts."""
        token = self.headers().get("Authorization", "").split(" ", 1)[-1]
        return tuple(sorted({self.config.resolved_key.reveal(), token} - {""}))

    @abstractmethod
    def request(self, message: dict[str, Any], audience_key: str) -> Request:
        """The HTTP request that delivers one Identify message."""

    async def prepare(self, sender: Sender, audience_key: str) -> None:  # noqa: B027
        """Anything the destination needs before an audience's first change."""

    def remote_id(self, answer: Any) -> int | None:
        """The destination's own id for the user, from its answer to `request()`; None where
        it has no mass updates (config.bulk_size is None) or the answer names none."""
        return None

    def mass_update(self, audience_key: str, value: bool, ids: Sequence[int]) -> Request:
        """One request setting the audience's value for users known by their `remote_id`s."""
        raise NotImplementedError(f"{self.integration} has no mass updates")
