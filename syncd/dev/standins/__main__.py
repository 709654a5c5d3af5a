"""`python -m syncd.dev.standins`: the Nat, User.com and Segment stand-ins until SIGINT/SIGTERM,
on the ports and keys examples/standins.toml expects (flags change them)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from contextlib import ExitStack

from syncd.dev.standins import (
    DEFAULT_KEYS,
    DEFAULT_PORTS,
    KEY_ENV,
    NatStandIn,
    PortTaken,
    SegmentStandIn,
    StandIn,
    UserComStandIn,
    listen,
)
from syncd.dev.standins.base import RECEIVED
from syncd.dev.standins.usercom import ID_FIELDS


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m syncd.dev.standins",
                                     description="Run local stand-ins of Nat, User.com and Segment.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    for name, label in (("nat", "Nat"), ("usercom", "User.com"), ("segment", "Segment")):
        parser.add_argument(f"--{name}-port", type=int, default=DEFAULT_PORTS[name],
                            help=f"{label} stand-in's port (default {DEFAULT_PORTS[name]}; 0: any free one)")
        parser.add_argument(f"--{name}-key", default=DEFAULT_KEYS[name],
                            help=f"the key it accepts (default {DEFAULT_KEYS[name]})")
    parser.add_argument("--usercom-id-field", choices=ID_FIELDS, default="custom_id",
                        help="what User.com's user listing names the custom id")
    parser.add_argument("--rate-limit", type=float, default=None,
                        help="requests per second each accepts, 429 with Retry-After beyond it")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with ExitStack() as stack:
        specs: list[tuple[type[StandIn], str, int, dict[str, str]]] = [
            (NatStandIn, args.nat_key, args.nat_port, {}),
            (UserComStandIn, args.usercom_key, args.usercom_port, {"id_field": args.usercom_id_field}),
            (SegmentStandIn, args.segment_key, args.segment_port, {}),
        ]
        servers = []
        try:
            for kind, key, port, options in specs:
                servers.append(listen(kind, key, port, args.host, **options))
                stack.callback(servers[-1].stop)
        except PortTaken as exc:
            print(f"standins: {exc}", file=sys.stderr)
            return 1
        for server in servers:
            server.rate_limit = args.rate_limit
            server.start()
            print(f"{server.name + ' stand-in':<19} {server.service_url:<36} key {server.api_key}")
        keys = " ".join(f"{KEY_ENV[name]}={getattr(args, name + '_key')}" for name in KEY_ENV)
        print(f"GET {RECEIVED} on each lists what it accepted; Ctrl-C stops them.\n"
              f"For examples/standins.toml: export {keys}", flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
