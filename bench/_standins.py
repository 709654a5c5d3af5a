"""The stand-ins in a child process, driven over its stdin: one JSON command a line, one JSON
answer a line. Their threads then do not compete with the measured process for its GIL,
and the counters are the stand-ins' own (every HTTP request they received, per route).

    with StandInProcess() as stand_ins:
        stand_ins.urls["usercom"]                      # each service's address
        stand_ins.rate(usercom=10)                     # requests/s, 429 + Retry-After beyond
        stand_ins.delay(segment=0.05)                  # seconds before each answer
        stand_ins.seed_usercom([f"m{i}" for i in ...])  # users that exist before syncd runs
        stand_ins.counters("usercom")                  # requests, 429s, routes, calls, ...
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from types import TracebackType
from typing import Any

from syncd.dev.standins import NatStandIn, SegmentStandIn, StandIn, UserComStandIn

KEYS = {"nat": "bench-nat-key", "usercom": "bench-usercom-key", "segment": "bench-segment-key"}
ENV = {"NAT_API_KEY": KEYS["nat"], "USERCOM_API_KEY": KEYS["usercom"], "SEGMENT_WRITE_KEY": KEYS["segment"]}


def serve(options: dict[str, Any]) -> None:
    """The child: all three stand-ins, answering commands until stdin closes."""
    servers: dict[str, StandIn] = {
        "nat": NatStandIn(KEYS["nat"]),
        "usercom": UserComStandIn(KEYS["usercom"], id_field=options.get("id_field", "custom_id")),
        "segment": SegmentStandIn(KEYS["segment"], record=options.get("record", True)),
    }
    for server in servers.values():
        server.start()
    print(json.dumps({name: server.service_url for name, server in servers.items()}), flush=True)
    for line in sys.stdin:
        command, argument = json.loads(line)
        print(json.dumps(_answer(servers, command, argument)), flush=True)
    for server in servers.values():
        server.stop()


def _answer(servers: dict[str, StandIn], command: str, argument: Any) -> Any:
    if command == "rate":
        for name, rate in argument.items():
            servers[name].rate_limit = rate or None
        return {}
    if command == "delay":  # seconds before each answer: a receiver that far away
        for name, seconds in argument.items():
            servers[name].delay = seconds
        return {}
    if command == "seed":
        usercom = servers["usercom"]
        assert isinstance(usercom, UserComStandIn)
        return {"seeded": len(usercom.seed_users(argument["custom_ids"], emails=argument["emails"]))}
    if command == "holding":  # what User.com holds for an attribute: values and users
        usercom = servers["usercom"]
        assert isinstance(usercom, UserComStandIn)
        values = [u["attributes"].get(argument) for u in usercom.users().values()]
        return {"true": values.count(True), "false": values.count(False), "users": len(values)}
    if command == "counters":
        return {name: _counters(server) for name, server in servers.items()}
    if command == "reset":  # forget what was received (memory) and the counters
        servers[argument].reset()
        return {}
    if command == "cpu":
        return {"seconds": time.process_time()}
    raise ValueError(f"unknown command {command!r}")


def _counters(server: StandIn) -> dict[str, Any]:
    counters: dict[str, Any] = {"requests": server.requests, "429s": server.rate_limited,
                                "routes": dict(server.routes)}
    if isinstance(server, UserComStandIn):
        counters["calls"] = server.calls()
    if isinstance(server, SegmentStandIn):
        counters |= {"accepted_calls": server.accepted_calls, "events": server.events_accepted,
                     "duplicates": server.duplicates}
    return counters


class StandInProcess:
    """The client side of `serve`."""

    def __init__(self, **options: Any) -> None:
        self._process = subprocess.Popen([sys.executable, __file__, json.dumps(options)],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.urls: dict[str, str] = self._read()

    def _read(self) -> Any:
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            raise SystemExit("the stand-ins' process ended; see its error above")
        return json.loads(line)

    def _ask(self, command: str, argument: Any = None) -> Any:
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps([command, argument]) + "\n")
        self._process.stdin.flush()
        return self._read()

    def rate(self, **rates: float | None) -> None:
        """Requests per second per service (None: no limit)."""
        self._ask("rate", rates)

    def delay(self, **seconds: float) -> None:
        """Seconds each service waits before it answers (its distance, in round trips)."""
        self._ask("delay", seconds)

    def seed_usercom(self, custom_ids: list[str], emails: bool = True) -> None:
        self._ask("seed", {"custom_ids": custom_ids, "emails": emails})

    def holding(self, attribute: str) -> dict[str, int]:
        """User.com's users holding `attribute` true and false, and all its users."""
        result: dict[str, int] = self._ask("holding", attribute)
        return result

    def counters(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._ask("counters")[name]
        return result

    def reset(self, name: str) -> None:
        self._ask("reset", name)

    def cpu_seconds(self) -> float:
        """CPU time the stand-ins' process has used so far (all its threads)."""
        return float(self._ask("cpu")["seconds"])

    def close(self) -> None:
        self._process.communicate("")

    def __enter__(self) -> StandInProcess:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


if __name__ == "__main__":
    serve(json.loads(sys.argv[1]))
