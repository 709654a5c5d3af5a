"""Command line: parse, set up logging, call into the package. Exit 0 / 1 / 2 as SPEC."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
from collections.abc import Sequence

from sqlalchemy.exc import SQLAlchemyError

from syncd import __version__
from syncd.config import Config, ConfigError, default_config_path, load_config
from syncd.ledger import RunInProgress
from syncd.logs import LOG_FORMATS, setup_logging
from syncd.metrics import MetricsError
from syncd.signals import stop_on_signals

log = logging.getLogger("syncd")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="syncd", description="Audience sync daemon for Nat and User.com.")
    parser.add_argument("--version", action="version", version=f"syncd {__version__}")
    _add_log_format(parser, default="text")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=None,
                        help="path to config.toml (default: $SYNCD_CONFIG or ./config.toml)")
    # Also accepted after the command; SUPPRESS keeps a global value from being reset.
    _add_log_format(common, default=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("run", parents=[common], help="the daemon: sync on a schedule until stopped")
    sub.add_parser("run-once", parents=[common], help="sync every audience once, then exit")
    status = sub.add_parser("status", parents=[common], help="what each destination holds and lacks")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    sub.add_parser("migrate", parents=[common], help="bring the state database schema up to date")
    return parser


def _add_log_format(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--log-format", choices=LOG_FORMATS, default=default,
                        help="text (default) or json: one JSON object per line, for log shippers")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_format)
    try:
        config = load_config(args.config or default_config_path())
        return _dispatch(args, config)
    except ConfigError as exc:
        if args.log_format == "json":  # a shipper expects every line to be JSON
            log.error("%s", exc, extra={"config_file": exc.path, "config_key": exc.key})
        else:
            print(f"syncd: {exc}", file=sys.stderr)
        return 2
    except (RunInProgress, MetricsError) as exc:
        log.error("%s", exc)
        return 1
    except SQLAlchemyError as exc:
        log.error("state database error: %s", " ".join(str(getattr(exc, "orig", exc)).split())[:300])
        return 1
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace, config: Config) -> int:
    from syncd import progress, scheduler, status, sync  # heavy imports only once the config is good

    shown = progress.for_stream(sys.stderr, args.log_format)
    if args.command == "run":
        scheduler.serve(config, progress=shown, environ=os.environ)
        return 0
    if args.command == "run-once":  # serves no metrics: it is gone before a scrape (README)
        stop = threading.Event()
        stop_on_signals(stop)
        return sync.run_once(config, sync.Options(stop_event=stop, progress=shown)).exit_code
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
