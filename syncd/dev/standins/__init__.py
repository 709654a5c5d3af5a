"""Local stand-ins of Nat, User.com and Segment's HTTP Tracking API: real HTTP servers.

They behave like the documented services (auth, required fields, User.com's typed
attributes and user listing, Segment's size limits) and can be told to misbehave (5xx, 429
with Retry-After, slow answers, rate limits), so the tests, the demo and the benchmarks
exercise syncd's real HTTP path. `python -m syncd.dev.standins` runs all three until
interrupted; `GET /_standin/received` on each lists what it accepted.
"""

from syncd.dev.standins.base import Fault, PortTaken, Reply, StandIn, basic_auth, listen
from syncd.dev.standins.nat import NatStandIn
from syncd.dev.standins.segment import SegmentStandIn
from syncd.dev.standins.usercom import UserComStandIn

# What `python -m syncd.dev.standins`, `make demo` and examples/standins.toml agree on.
DEFAULT_PORTS = {"nat": 18081, "usercom": 18082, "segment": 18083}
DEFAULT_KEYS = {"nat": "demo-nat-key", "usercom": "demo-usercom-key", "segment": "demo-segment-key"}
KEY_ENV = {"nat": "NAT_API_KEY", "usercom": "USERCOM_API_KEY", "segment": "SEGMENT_WRITE_KEY"}

__all__ = [
    "DEFAULT_KEYS", "DEFAULT_PORTS", "KEY_ENV", "Fault", "NatStandIn", "PortTaken", "Reply",
    "SegmentStandIn", "StandIn", "UserComStandIn", "basic_auth", "listen",
]
