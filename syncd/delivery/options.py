"""How a run's delivery behaves beyond the config: tests shorten the waits and bring their
own transport, the daemon passes a stop flag and a latency observer, the CLI a progress
display. run/pipeline.py's Options extends it with what only a run needs."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from syncd.delivery.sender import RetryPolicy
from syncd.model import Null, Progress

if TYPE_CHECKING:
    import httpx


@dataclass
class DeliveryOptions:
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    stop_event: threading.Event | None = None
    transport: Callable[[], httpx.AsyncBaseTransport] | None = None
    progress: Progress = field(default_factory=Null)
    latency: Callable[[str, float], None] | None = None  # (destination, seconds per response)
