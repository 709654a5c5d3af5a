"""Command line: parse, set up logging, call into the package. Exit 0 / 1 / 2 as SPEC."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

from syncd import __version__
from syncd.cli.logs import LOG_FORMATS, setup_logging
from syncd.config import Config, default_config_path, load_config
from syncd.daemon.signals import stop_on_signals
from syncd.errors import SyncdError, UsageError
from syncd.render import database_error

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from syncd.cli.commands.operator import Output
    from syncd.model import Progress
    from syncd.run.pipeline import Options

log = logging.getLogger("syncd")

# The commands that send: only they read the API keys (SPEC 2), before any database or network.
SENDING_COMMANDS = frozenset({"run", "run-once", "resync", "retry"})


class UsageExit(UsageError):
    """argparse found the command line wrong; main() reports it in the chosen log format."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser, self.message = parser, message


class _Parser(argparse.ArgumentParser):
    # Raise instead of printing and exiting: whether the message must be a JSON line depends on
    # `--log-format`, which may come after the mistake (subcommands are of this class too).
    def error(self, message: str) -> NoReturn:
        raise UsageExit(self, message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="syncd",
                     description="Audience sync daemon for Nat, User.com and Segment-compatible receivers.")
    parser.add_argument("--version", action="version", version=f"syncd {__version__}")
    _add_log_format(parser, default="text")
    common = _Parser(add_help=False)
    common.add_argument("--config", default=None,
                        help="path to config.toml (default: $SYNCD_CONFIG or ./config.toml)")
    # Also accepted after the command; SUPPRESS keeps a global value from being reset.
    _add_log_format(common, default=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("run", parents=[common], help="the daemon: sync on a schedule until stopped")
    sub.add_parser("run-once", parents=[common], help="sync every audience once, then exit")
    with_json = _Parser(add_help=False, parents=[common])
    with_json.add_argument("--json", action="store_true", help="machine-readable output")
    sub.add_parser("status", parents=[with_json], help="what each destination holds and lacks")
    sub.add_parser("migrate", parents=[common], help="bring the state database schema up to date")
    sub.add_parser("plan", parents=[with_json], help="dry run: what a run would send now (sends nothing)")
    resync = sub.add_parser("resync", parents=[with_json],
                            help="send an audience's full state again, now")
    resync.add_argument("--audience", required=True, metavar="KEY", help="the audience key")
    resync.add_argument("--destination", metavar="NAME", help="only this destination")
    failures = sub.add_parser("failures", parents=[with_json], help="changes a destination rejected")
    failures.add_argument("--destination", metavar="NAME", help="only this destination")
    retry = sub.add_parser("retry", parents=[with_json], help="try the rejected changes again, now")
    retry.add_argument("--destination", metavar="NAME", help="only this destination")
    history = sub.add_parser("history", parents=[with_json], help="recent runs and what they did")
    history.add_argument("--limit", type=_positive, default=10, metavar="N", help="runs to show (10)")
    approve = sub.add_parser("approve", parents=[with_json],
                             help="let the next run send the exits the guard holds")
    approve.add_argument("--audience", required=True, metavar="KEY", help="the audience key")
    approve.add_argument("--destination", metavar="NAME", help="only this destination")
    check = sub.add_parser("check", parents=[with_json],
                           help="validate the config; --connect: reach sources and destinations")
    check.add_argument("--connect", action="store_true",
                       help="also run each query for its columns and reach each destination")
    check.add_argument("--alert", action="store_true",
                       help="also send one test message to the [alerts] webhook")
    return parser


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def _add_log_format(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--log-format", choices=LOG_FORMATS, default=default,
                        help="text (default) or json: one JSON object per line, for log shippers")


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser().parse_args(argv)
    except UsageExit as exc:
        return _usage_error(exc, _log_format(argv))
    except BrokenPipeError:  # --help or --version into a closed pipe
        _quiet_stdout()
        return 0
    setup_logging(args.log_format)
    try:
        config = load_config(args.config or default_config_path())
        return _dispatch(args, config)
    except SyncdError as exc:  # the exit code lives on the error (errors.py)
        _report(exc, args.log_format)
        return exc.exit_code
    except Exception as exc:
        if not _database_error(exc):
            raise
        log.error("state database error: %s", database_error(exc))
        return 1
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace, config: Config) -> int:
    # heavy imports only once the config is good
    from syncd.cli import progress
    from syncd.cli.commands import operator
    from syncd.daemon import scheduler
    from syncd.run import pipeline
    from syncd.state import schema

    pipeline.settle_heap()
    if args.command in SENDING_COMMANDS or getattr(args, "connect", False):  # check --connect uses the keys
        config = config.with_secrets()
    elif args.command == "check":  # a config with [alerts] that could not alert is not OK
        config = config.with_alert_secret()
    shown = progress.for_stream(sys.stderr, args.log_format)
    if args.command == "run":
        scheduler.serve(config, progress=shown, environ=os.environ)
        return 0
    if args.command == "run-once":  # serves no metrics: it is gone before a scrape (README)
        return pipeline.run_once(config, _run_options(shown)).exit_code
    if args.command == "check":  # needs no state database
        return _check(args, config)
    operator.check_args(config, getattr(args, "audience", None), getattr(args, "destination", None))
    if args.command == "migrate":  # says what it did
        _print(str(schema.migrate_state(config.state_url)))
        return 0
    engine = pipeline.open_state(config, schema.Access.SEND if args.command in SENDING_COMMANDS
                                 else schema.Access.READ)
    try:
        output = _command(args, config, engine, shown)
        if args.json or output.text:
            _print(json.dumps(output.data, indent=2) if args.json else output.text)
        return output.exit_code
    finally:
        engine.dispose()


def _command(args: argparse.Namespace, config: Config, engine: Engine, shown: Progress) -> Output:
    """One command against the state database: one call into run/ or state/, rendered."""
    from syncd.cli.commands import operator, status
    from syncd.run import operator as run_operator
    from syncd.run.plan import plan
    from syncd.state import operator as state_operator

    if args.command == "status":
        rows = status.status(config, engine)
        return operator.Output(rows, status.format_status(rows))
    if args.command == "plan":  # stops promptly on SIGTERM/SIGINT, its queries cancelled (as run-once)
        stop = threading.Event()
        stop_on_signals(stop)
        return operator.plan(plan(config, engine, stop))
    if args.command == "resync":
        return operator.resync(run_operator.resync(config, engine, args.audience, args.destination,
                                                   _run_options(shown)))
    if args.command == "failures":
        return operator.failures(state_operator.failures(engine, args.destination))
    if args.command == "retry":
        return operator.retry(run_operator.retry(config, engine, args.destination, _run_options(shown)))
    if args.command == "history":
        return operator.history(state_operator.history(engine, args.limit))
    return operator.approve(run_operator.approve(config, engine, args.audience, args.destination))


def _check(args: argparse.Namespace, config: Config) -> int:
    from syncd.cli.commands import check

    checks = check.check(config, args.connect, args.alert)
    _print(json.dumps([c.as_dict() for c in checks], indent=2) if args.json else check.format_checks(checks))
    return 0 if all(c.ok for c in checks) else 1


def _print(text: str) -> None:
    """Output that may go into a pipe closed early (`syncd history | head -1`): the reader
    has what it wanted, so that ends quietly and the command keeps its exit status."""
    try:
        print(text)
        sys.stdout.flush()  # now, not at exit, where the error would be "ignored" on stderr
    except BrokenPipeError:
        _quiet_stdout()


def _quiet_stdout() -> None:
    # Python flushes stdout again at exit: point it at /dev/null so that flush has nowhere to fail.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _log_format(argv: Sequence[str]) -> str:
    """`--log-format` as given anywhere on a command line argparse could not parse (the last wins)."""
    chosen = "text"
    for i, arg in enumerate(argv):
        if arg == "--log-format" and i + 1 < len(argv):
            chosen = argv[i + 1]
        elif arg.startswith("--log-format="):
            chosen = arg.partition("=")[2]
    return chosen if chosen in LOG_FORMATS else "text"


def _database_error(exc: Exception) -> bool:
    """An SQLAlchemy error? SQLAlchemy is imported only once a command opens a database
    (`--help` and a config error never load it), so before that no error can be one."""
    errors = sys.modules.get("sqlalchemy.exc")
    return errors is not None and isinstance(exc, errors.SQLAlchemyError)


def _report(exc: SyncdError, log_format: str) -> None:
    if not exc.user_input:
        log.error("%s", exc)
    elif log_format == "json":  # a shipper expects every line to be JSON
        log.error("%s", exc, extra={"config_file": getattr(exc, "path", None),
                                    "config_key": getattr(exc, "key", None)})
    else:
        print(f"syncd: {exc}", file=sys.stderr)


def _usage_error(exc: UsageExit, log_format: str) -> int:
    if log_format == "json":  # a shipper expects every line to be JSON
        setup_logging("json")
        usage = " ".join(exc.parser.format_usage().split())  # one line: argparse wraps it
        log.error("%s: %s", exc.parser.prog, exc.message, extra={"usage": usage})
    else:
        exc.parser.print_usage(sys.stderr)
        print(f"{exc.parser.prog}: error: {exc.message}", file=sys.stderr)
    return 2


def _run_options(shown: Progress) -> Options:
    from syncd.run.pipeline import Options

    stop = threading.Event()
    stop_on_signals(stop)
    return Options(stop_event=stop, progress=shown)


if __name__ == "__main__":
    sys.exit(main())
