"""Sending requests to one destination: concurrency, pacing, retries, and what failures mean.

Each answer is classified (wire.py: `classify`, or the destination's own `classify`) into
what the caller does next: acknowledged, retry later, give up on this change, or stop the
destination for the run. Retrying is bounded (attempts per change, and a destination whose
changes keep running out of attempts is set aside for the rest of the run), so a run always
finishes in minutes; what is left waits in the ledger for the next run.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from syncd import __version__
from syncd.delivery import wire
from syncd.delivery.wire import Answer, Request, Result, Verdict
from syncd.render import one_line, redact


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4  # per change per run
    base_delay: float = 0.5  # seconds; doubles each attempt, with full jitter
    max_delay: float = 30.0
    max_retry_after: float = 120.0  # a longer Retry-After sets the destination aside
    set_aside_after: int = 5  # consecutive changes that ran out of attempts

    def backoff(self, attempt: int) -> float:
        return random.uniform(0, min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))


class Pacer:
    """Spaces requests evenly at `rate` per second; `pause_until` holds everyone (429).

    Waiting ends early once `cancelled()` is true, so a stop signal or a destination
    set aside never leaves a task asleep behind a long pause.
    """

    def __init__(self, rate: float | None, cancelled: Callable[[], bool] = lambda: False) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self.next_slot = 0.0
        self.paused_until = 0.0
        self.cancelled = cancelled

    async def wait(self) -> None:
        while not self.cancelled():
            now = time.monotonic()
            if now < self.paused_until:
                await self._nap(self.paused_until - now)
                continue
            slot = max(now, self.next_slot)
            self.next_slot = slot + self.interval
            await self._nap(slot - now)
            if time.monotonic() >= self.paused_until:
                return

    async def _nap(self, seconds: float) -> None:
        """Sleep in short naps, so a stop is noticed within half a second."""
        while seconds > 0 and not self.cancelled():
            await asyncio.sleep(min(0.5, seconds))
            seconds -= 0.5

    def pause_until(self, moment: float) -> None:
        self.paused_until = max(self.paused_until, moment)


def retry_after_seconds(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def reason_of(response: httpx.Response) -> str:
    """A short reason from the destination's answer, whatever shape the body has."""
    text = response.text.strip()
    body = _json(response)
    if isinstance(body, dict):
        for key in ("error", "message", "detail", "errors"):
            if key in body:
                text = str(body[key])
                break
        else:
            text = str(body)
    elif text.startswith("<"):
        text = ""  # an HTML error page says nothing useful in one line
    reason = f"HTTP {response.status_code} {response.reason_phrase}".strip()
    text = one_line(text)
    return f"{reason}: {text}" if text else reason


def answer_of(response: httpx.Response) -> Answer:
    """The answer as a destination's probe reads it."""
    return Answer(response.status_code, reason_of(response), _json(response))


def http_request(client: httpx.AsyncClient | httpx.Client, request: Request) -> httpx.Request:
    """The HTTP request of `request` (deliveries and probes alike): `content` (JSON already) as
    it is, else `body` as JSON; without the Authorization header when `anonymous`."""
    if request.content is None:
        built = client.build_request(request.method, request.url, json=request.body)
    else:
        built = client.build_request(request.method, request.url, content=request.content,
                                     headers={"Content-Type": "application/json"})
    if request.anonymous:
        built.headers.pop("Authorization", None)
    return built


def _json(response: httpx.Response) -> Any:
    """The answer's JSON body; None if it has none."""
    try:
        return response.json()
    except ValueError:
        return None


# Exceptions raised after the request may have reached the destination.
_UNCERTAIN = (httpx.ReadTimeout, httpx.ReadError, httpx.RemoteProtocolError, httpx.WriteTimeout)


@dataclass
class Sender:
    """One destination's HTTP client for one run."""

    name: str
    headers: dict[str, str]
    concurrency: int
    rate_limit: float | None
    timeout: float
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    stop_event: threading.Event | None = None
    transport: httpx.AsyncBaseTransport | None = None
    secrets: tuple[str, ...] = ()  # never let these into an error text
    on_latency: Callable[[float], None] | None = None  # seconds from request to response
    classify: Callable[[int], Verdict] = wire.classify  # the destination's reading of a status
    stopped: str | None = None  # why the destination is out for the rest of the run
    refused: bool = False  # ...because it refused the key (401/403)
    _consecutive_exhausted: int = 0

    def __post_init__(self) -> None:
        self.pacer = Pacer(self.rate_limit, self.interrupted)
        self.semaphore = asyncio.Semaphore(self.concurrency)
        limits = httpx.Limits(max_connections=self.concurrency,
                              max_keepalive_connections=self.concurrency)
        self.client = httpx.AsyncClient(
            headers={"User-Agent": f"syncd/{__version__}", **self.headers},
            timeout=httpx.Timeout(self.timeout, pool=None),
            limits=limits, transport=self.transport,
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    def interrupted(self) -> bool:
        return self.stopped is not None or (self.stop_event is not None and self.stop_event.is_set())

    async def call(self, request: Request) -> Result:
        """Send one request, retrying transient failures within the policy's bounds."""
        last, uncertain = Result(None), False
        for attempt in range(1, self.policy.attempts + 1):
            await self.pacer.wait()
            attempted = await self._attempt(request, attempt)
            if attempted is None:  # stopped or set aside while this one waited its turn
                break
            last, wait = attempted
            uncertain = uncertain or last.uncertain
            if last.verdict is Verdict.ACK:
                self._consecutive_exhausted = 0
            if last.verdict is not Verdict.RETRY:
                return replace(last, uncertain=uncertain and last.verdict is not Verdict.ACK)
            if attempt < self.policy.attempts:
                await asyncio.sleep(wait)
        else:
            self._give_up(last)
        return replace(last, uncertain=uncertain)

    def _give_up(self, last: Result) -> None:
        self._consecutive_exhausted += 1
        if self._consecutive_exhausted >= self.policy.set_aside_after and self.stopped is None:
            self.stopped = (f"set aside for this run after {self._consecutive_exhausted} changes in a "
                            f"row failed {self.policy.attempts} times (last: {last.error})")

    async def _attempt(self, request: Request, attempt: int) -> tuple[Result, float] | None:
        async with self.semaphore:
            if self.interrupted():
                return None
            started = time.monotonic()
            try:
                response = await self.client.send(http_request(self.client, request))
            except httpx.HTTPError as exc:
                error = redact(_describe(exc), self.secrets)
                result = Result(Verdict.RETRY, attempt, None, error, isinstance(exc, _UNCERTAIN))
                return result, self.policy.backoff(attempt)
            if self.on_latency is not None:
                self.on_latency(time.monotonic() - started)
        verdict = self.classify(response.status_code)
        body = _json(response)  # a refusal's too: it may say what was wrong
        if verdict is Verdict.ACK:
            return Result(verdict, attempt, response.status_code, body=body), 0.0
        result = Result(verdict, attempt, response.status_code, redact(reason_of(response), self.secrets),
                        body=body)
        if verdict is Verdict.STOP and not self.refused:
            self.stopped, self.refused = f"{self.name} refused the API key ({result.error})", True
        wait = self.policy.backoff(attempt)
        if verdict is Verdict.RETRY:
            retry_after = retry_after_seconds(response)
            if retry_after is not None and retry_after > self.policy.max_retry_after:
                self.stopped = (f"{self.name} asked to wait {retry_after:.0f}s (Retry-After); "
                                "set aside until the next run")
                return result, 0.0
            if retry_after is not None:
                wait = retry_after
            if retry_after is not None or response.status_code == 429:
                # The destination is limiting us, not this change: everyone waits.
                self.pacer.pause_until(time.monotonic() + wait)
        return result, wait


def _describe(exc: httpx.HTTPError) -> str:
    kind = type(exc).__name__
    detail = one_line(exc)
    return f"{kind}: {detail}" if detail else kind
