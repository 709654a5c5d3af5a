"""Command line: parse, set up logging, call into the package. Exit 0 / 1 / 2 as SPEC."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from collections.abc import Sequence

from sqlalchemy.exc import SQLAlchemyError

from syncd import __version__
from syncd.config import Config, ConfigError, default_config_path, load_config
from syncd.ledger import RunInProgress
from syncd.signals import stop_on_signals

log = logging.getLogger("syncd")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="syncd", description="Audience sync daemon for Nat and User.com.")
    parser.add_argument("--version", action="version", version=f"syncd {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=None,
                        help="path to config.toml (default: $SYNCD_CONFIG or ./config.toml)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("run", parents=[common], help="the daemon: sync on a schedule until stopped")
    sub.add_parser("run-once", parents=[common], help="sync every audience once, then exit")
    status = sub.add_parser("status", parents=[common], help="what each destination holds and lacks")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    sub.add_parser("migrate", parents=[common], help="bring the state database schema up to date")
    return parser


def setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    # journald stamps each line itself; a terminal wants the time.
    fmt = "%(asctime)s %(levelname)s %(message)s" if sys.stderr.isatty() else "%(levelname)s %(message)s"
    handler.setFormatter(logging.Formatter(fmt, "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    for noisy in ("httpx", "httpcore", "apscheduler", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        config = load_config(args.config or default_config_path())
        return _dispatch(args, config)
    except ConfigError as exc:
        print(f"syncd: {exc}", file=sys.stderr)
        return 2
    except RunInProgress as exc:
        log.error("%s", exc)
        return 1
    except SQLAlchemyError as exc:
        log.error("state database error: %s", " ".join(str(getattr(exc, "orig", exc)).split())[:300])
        return 1
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace, config: Config) -> int:
    from syncd import scheduler, status, sync  # heavy imports only once the config is good

    if args.command == "run":
        scheduler.serve(config)
        return 0
    if args.command == "run-once":
        stop = threading.Event()
        stop_on_signals(stop)
        return sync.run_once(config, sync.Options(stop_event=stop)).exit_code
    engine = sync.open_state(config)
    try:
        if args.command == "migrate":
            print("state database is up to date")
            return 0
        rows = status.status(config, engine)
        print(json.dumps(rows, indent=2) if args.json else status.format_status(rows))
        return 0
    finally:
        engine.dispose()


if __name__ == "__main__":
    sys.exit(main())
