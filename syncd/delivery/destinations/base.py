"""The destination interface: one class per destination type, carrying everything about it.

A type is a subclass of `Destination`, in one module, registered by name: the built-in ones
in config/registry.py (BUILT_IN), any other by its package's entry point in the
`syncd.destinations` group (`<type> = "<module>:<Class>"`). The config loads the class to read
its class attributes; delivery/ and `check --connect` make one instance per configured
destination (`Destination(config)`) and call its methods. A destination module must not
import httpx (or anything heavy) at import time: it is imported while the config is read.

Class attributes (what the type is; read by the config before anything is sent):

    type          the name in config.toml (`type = "..."`), the same as its entry point's
    integration   its name in the Identify's `integrations` object ("Nat", "User.com")
    settings      its own config keys, as config.settings declarations: exactly one
                  `Address` (`endpoint`, or `base_url` with base=True: paths are appended),
                  and any `Number` or `Choices`; their values are in `config.settings`
                  (the address also as `config.url`). A type with mass updates declares
                  `bulk_size` (users per mass update).
    rate_limit    default requests per second; `concurrency`: default requests in flight
    needs_email   it keys users by email: a member without one is skipped, and the ledger
                  keeps a value per (user, email)
    reserved      field names it sends itself: no audience key or query column may use
                  them (the config takes the union over types)
    key_limit     the longest audience key it can store (User.com: 32, its attribute
                  names); None: only syncd's own limit (64)
    bulk_paths    the ways it takes many changes in one call, each a module of delivery/:
                  "mass_updates" (bulk.py: `remote_id()`, `mass_update()`, a `bulk_size`
                  setting) and "listing" (listing.py: learning many ids at once from
                  `list_users()` and `listed()`, so that mass updates reach users never sent
                  before), "batches" (batches.py: many users' events per call, from
                  `events()` and `batch()`, a `batch_size` setting, at most `max_call_bytes`
                  per call and `max_event_bytes` per event); none by default: one call per
                  user (calls.py)

Methods (what it does; `self.config` is its DestinationConfig, the key resolved):

    headers()                 authentication and protocol headers for every request
    request(message, key)     the wire format: the Request that delivers one Identify
                              (message: identify.py's dict, carrying one or more audiences)
    classify(status)          what an answer means (wire.py: ACK, RETRY, REJECT, STOP);
                              the default is wire.classify
    probe(call)               `check --connect`: read-only requests only (never an
                              Identify); `call(Request)` returns an Answer and raises if the
                              destination cannot be reached (check reports that itself)
    prepare(sender, key)      async; anything needed before an audience's changes go out
                              (User.com: the boolean attribute): before its first, then
                              again in every run that sends calls of users' own (not only
                              mass updates) and after a conflict; raise DestinationError to
                              leave the pair undelivered this run, DestinationConflict when
                              a person must change the destination first (alerted, checked
                              every run until then). The instance lives for one run: it
                              may keep what it learned for the other audiences
    check_again(sender, key)  after a change was refused for that setup (bulk.py): look
                              again, not from what the run knows; prepare() by default
    estimate(workload)        the calls its changes will take (syncd/estimate.py: Workload
                              counts the work, CallEstimate the calls by kind): `plan`, the
                              progress ETA and `status` show it; one call per user by default
    remote_id(answer)         bulk paths: its own id for the user, from the JSON answer to
    mass_update(key, v, ids)  `request()`; one Request setting an audience's value for
                              users known by those ids (chunks of `bulk_size`). A type
                              without mass updates leaves both alone.
    blames_attribute(body)    a refused mass update's answer blames the audience's attribute
                              (missing, or of another type), not the users: `prepare()` runs
                              again (it re-creates a missing one) and the chunk is resent
    list_users(cursor)        listing: the Request for one page of its users (cursor None: the
    listed(body)              first page), and what a page's JSON answer says (`Listed`:
                              its users, their ids by custom id, where the next page is);
                              ValueError if it is no such page
    events(message, carried)  batches: the events of one user's call (message: its Identify;
                              carried: its changes as (audience key, change)), each an
                              `Event`: its JSON and the changes it carries; a change is
                              acknowledged once all of its events are
    batch(events, sent_at)    batches: the one Request carrying these events (their JSON)
    secrets()                 every form of the key an answer could echo (redacted)

A problem that leaves a pair undelivered for this run is a DestinationError; every answer
goes through the sender (pacing, retries, Retry-After), so a type never sleeps or retries.
"""

from __future__ import annotations

import base64
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from syncd.config import DestinationConfig, Setting
from syncd.delivery import wire
from syncd.delivery.wire import Answer, Probe, Request, Verdict
from syncd.estimate import CallEstimate, Workload, one_per_user
from syncd.model import Change

if TYPE_CHECKING:
    from syncd.delivery.sender import Sender

# What every Identify carries or a query names as the user: no destination lets a trait
# overwrite them.
IDENTITY_FIELDS = frozenset({"email", "user_id", "userId", "anonymous_id", "anonymousId", "url"})


class Event(NamedTuple):
    """A batch event as sent, and the changes it carries."""

    raw: bytes  # its JSON (`wire.json_bytes`: serialised once, measured, joined into the call)
    carried: list[tuple[str, Change]]  # as (audience key, change)

    @property
    def size(self) -> int:
        return len(self.raw)


def basic_auth(key: str) -> str:
    """Segment's scheme (Nat's too): the key as the user name, no password."""
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


class Listed(NamedTuple):
    """One page of a destination's users, as `Destination.listed` reads it."""

    total: int  # the destination's users, all pages together
    users: int  # on this page
    ids: Mapping[str, int]  # custom id -> the destination's id (users without a custom id left out)
    cursor: str | None  # where the next page is (for `list_users`); None: this was the last


class Destination(ABC):
    type: ClassVar[str]
    integration: ClassVar[str]
    settings: ClassVar[tuple[Setting, ...]]
    # Neither Nat nor User.com publishes a rate limit we could confirm, so the defaults stay
    # well under what such APIs commonly allow; a destination that still answers 429 is
    # slowed by its Retry-After.
    rate_limit: ClassVar[float] = 10.0
    concurrency: ClassVar[int] = 4
    needs_email: ClassVar[bool] = False
    reserved: ClassVar[frozenset[str]] = IDENTITY_FIELDS
    key_limit: ClassVar[int | None] = None
    bulk_paths: ClassVar[frozenset[str]] = frozenset()
    listing_page_size: ClassVar[int] = 100  # users per page of `list_users`
    max_call_bytes: ClassVar[int] = 500_000  # batches: the JSON of one call, at most
    max_event_bytes: ClassVar[int] = 32 * 1024  # batches: the JSON of one event, at most

    def __init__(self, config: DestinationConfig) -> None:
        self.config = config
        self.name = config.name

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

    def classify(self, status: int) -> Verdict:
        """What an answer with this status means for the change(s) it carried."""
        return wire.classify(status)

    def probe(self, call: Callable[[Request], Answer]) -> Probe:
        """Without a read-only call that checks the key: the address answers, below 500."""
        answer = call(Request("GET", self.config.url))
        if answer.status >= 500:
            return Probe(False, f"answered {answer.reason}")
        return Probe(True, f"reachable (HTTP {answer.status}); {self.integration} has no read-only "
                           "call to check the key")

    async def prepare(self, sender: Sender, audience_key: str) -> None:  # noqa: B027
        """Anything the destination needs before an audience's changes go out."""

    async def check_again(self, sender: Sender, audience_key: str) -> None:
        """After a change was refused for what `prepare()` set up: look again, afresh."""
        await self.prepare(sender, audience_key)

    @property
    def bulk_size(self) -> int | None:
        """Users per mass update; None: the type has none (it declares no `bulk_size`)."""
        return self.config.bulk_size

    @property
    def batch_size(self) -> int:
        """Events per call, for a type with batches (its `batch_size` setting)."""
        return int(self.config.settings.get("batch_size", 1))

    def events(self, message: dict[str, Any], carried: Sequence[tuple[str, Change]]) -> list[Event]:
        """The events of one user's call, each with the changes it carries."""
        raise NotImplementedError(f"{self.integration} has no batches")

    def batch(self, events: Sequence[bytes], sent_at: str) -> Request:
        """One call carrying `events` (each its JSON); `sent_at`: now (ISO 8601)."""
        raise NotImplementedError(f"{self.integration} has no batches")

    def remote_id(self, answer: Any) -> int | None:
        """The destination's own id for the user, from its answer to `request()`; None where
        it has no mass updates or the answer names none."""
        return None

    def mass_update(self, audience_key: str, value: bool, ids: Sequence[int]) -> Request:
        """One request setting the audience's value for users known by their `remote_id`s."""
        raise NotImplementedError(f"{self.integration} has no mass updates")

    def blames_attribute(self, body: Any) -> bool:
        """Whether a refused mass update's answer blames the audience's attribute, not the users."""
        return False

    def list_users(self, cursor: str | None) -> Request:
        """One page of the destination's users: the first (cursor None) or the one `cursor` names."""
        raise NotImplementedError(f"{self.integration} does not list its users")

    def listed(self, body: Any) -> Listed:
        """What one page of the listing says; ValueError if the answer is no such page."""
        raise NotImplementedError(f"{self.integration} does not list its users")

    def estimate(self, work: Workload) -> CallEstimate:
        """The calls `work` will take: one per user (every user's changes in one call)."""
        return one_per_user(work)
