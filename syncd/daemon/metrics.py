"""Prometheus metrics for `syncd run`, in the text exposition format (version 0.0.4).

A handful of counters, gauges and one histogram do not justify prometheus_client:
the format is a few lines of text, served by a `http.server` thread on the address
in `[metrics] listen`. Labels are only audience keys, destination names and run
outcomes, all from the config: never URLs, e-mails or keys.

What is exposed (all prefixed `syncd_`):

    runs_total{outcome}                                 counter
    changes_{sent,acknowledged,failed,skipped}_total{audience,destination}   counters
    delivery_latency_seconds{destination}               histogram (request -> response)
    pending_changes{audience,destination}               gauge, from the ledger after each run
    oldest_pending_age_seconds{audience,destination}    gauge (0 when nothing is pending)
    last_success_timestamp_seconds{audience,destination}  gauge, unix seconds
    build_info{version}                                 gauge, always 1
    last_run_timestamp_seconds                          gauge, when the latest run started (ledger)
    held_exits{audience,destination}                    gauge, exits the pair's latest run held
    destination_key_refused{destination}                gauge, 1: its latest run stopped, key refused

The same server answers /healthz, /readyz and serves the status page at / (syncd.page).
"""

from __future__ import annotations

import bisect
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from syncd import __version__
from syncd.config import Config, MetricsConfig
from syncd.errors import MetricsError
from syncd.model import PairOutcome, RunOutcome, ScheduledOutcome
from syncd.render import database_error
from syncd.state.readings import Reading, read

if TYPE_CHECKING:  # annotations only
    from syncd.run.report import RunReport

log = logging.getLogger("syncd")

# Every outcome a run can end with (RunReport.outcome; the scheduler's "skipped" and "error"):
# each series exists from the start, so an alert on its increase() sees the first one.
RUN_OUTCOMES: tuple[str, ...] = (
    RunOutcome.OK, RunOutcome.HELD, RunOutcome.UNDELIVERED, RunOutcome.INTERRUPTED, *ScheduledOutcome,
)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
HTML_TYPE = "text/html; charset=utf-8"
# The page needs nothing from anywhere: inline styles and data: images only.
PAGE_POLICY = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; "
               "form-action 'none'")
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_CHANGE_COUNTERS = {
    "sent": "Changes sent at least once (a change retried within a run counts once).",
    "acknowledged": "Changes the destination acknowledged (HTTP 2xx).",
    "failed": "Changes the destination refused (4xx); retried next run.",
    "skipped": "Members not sent because the destination needs an email they lack.",
}

Labels = tuple[tuple[str, str], ...]


class Metrics:
    """The daemon's numbers. Updated by the run thread, read by the HTTP thread: one lock."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.lock = threading.Lock()
        # Every series exists from the start at 0, so rate() and increase() see the first run.
        self.runs: dict[str, int] = dict.fromkeys(RUN_OUTCOMES, 0)
        self.changes: dict[tuple[str, str, str], int] = {}  # (kind, audience, destination)
        self.latency: dict[str, _Histogram] = {}
        self.pending: dict[tuple[str, str], int] = {}
        self.oldest_pending: dict[tuple[str, str], float | None] = {}  # unix seconds
        self.last_success: dict[tuple[str, str], float] = {}
        self.last_run: float | None = None  # unix seconds
        self.held_exits: dict[tuple[str, str], int] = {}
        self.key_refused: dict[str, int] = {}

    def observe_latency(self, destination: str, seconds: float) -> None:
        with self.lock:
            self.latency.setdefault(destination, _Histogram(LATENCY_BUCKETS)).observe(seconds)

    def count_run(self, outcome: str) -> None:
        with self.lock:
            self.runs[outcome] = self.runs.get(outcome, 0) + 1

    def record_run(self, report: RunReport, reading: Reading | None = None) -> None:
        """A finished run's counters and, with `reading` (the state after it), the gauges: a
        scrape sees both or neither, never a finished run beside the backlog from before it."""
        finished = self.clock()
        gauges = _Gauges.of(reading) if reading is not None else None
        with self.lock:
            if gauges is not None:
                self._set(gauges)
            self.runs[report.outcome] = self.runs.get(report.outcome, 0) + 1
            for pair in report.pairs:
                for kind in _CHANGE_COUNTERS:
                    key = (kind, pair.audience_key, pair.destination)
                    self.changes[key] = self.changes.get(key, 0) + int(getattr(pair, kind))
                if pair.outcome == PairOutcome.OK:
                    self.last_success[(pair.audience_key, pair.destination)] = finished

    def refresh(self, config: Config, engine: Engine) -> None:
        """The gauges from a fresh reading of the state database."""
        self.show(read(config, engine))

    def show(self, reading: Reading) -> None:
        """The gauges from a reading: backlogs, held exits, refused keys, the latest run's start,
        and (what counts at start-up) last successes."""
        gauges = _Gauges.of(reading)
        with self.lock:
            self._set(gauges)

    def _set(self, gauges: _Gauges) -> None:
        """Called with the lock held."""
        self.pending, self.oldest_pending = gauges.pending, gauges.oldest
        self.held_exits, self.key_refused = gauges.held, gauges.refused
        for audience_key, name in gauges.pending:
            for kind in _CHANGE_COUNTERS:
                self.changes.setdefault((kind, audience_key, name), 0)
        for pair, moment in gauges.last_successes.items():
            self.last_success[pair] = max(self.last_success.get(pair, 0.0), moment)
        if gauges.last_run is not None:
            self.last_run = gauges.last_run

    def render(self) -> str:
        with self.lock:
            return "".join(self._lines())

    def _lines(self) -> Iterator[str]:
        yield from _family("build_info", "gauge", "syncd version.", {(("version", __version__),): 1})
        yield from _family("runs_total", "counter", "Sync runs by outcome.",
                           {(("outcome", k),): v for k, v in sorted(self.runs.items())})
        for kind, help_text in _CHANGE_COUNTERS.items():
            values = {_pair_labels(a, d): v for (k, a, d), v in sorted(self.changes.items()) if k == kind}
            yield from _family(f"changes_{kind}_total", "counter", help_text, values)
        yield from self._latency_lines()
        yield from _family("pending_changes", "gauge", "Changes the destination has not acknowledged yet.",
                           {_pair_labels(*k): v for k, v in sorted(self.pending.items())})
        now = self.clock()
        ages = {_pair_labels(*k): max(0.0, now - v) if v is not None else 0.0
                for k, v in sorted(self.oldest_pending.items())}
        yield from _family("oldest_pending_age_seconds", "gauge",
                           "Age of the oldest change waiting for this destination (0: none).", ages)
        yield from _family("last_success_timestamp_seconds", "gauge",
                           "When a run last delivered everything for this pair (unix seconds).",
                           {_pair_labels(*k): v for k, v in sorted(self.last_success.items())})
        yield from self._latest_lines()

    def _latest_lines(self) -> Iterator[str]:
        no_labels: Labels = ()
        last_run = {no_labels: self.last_run} if self.last_run is not None else {}
        yield from _family("last_run_timestamp_seconds", "gauge",
                           "When the latest run recorded in the ledger started (unix seconds).", last_run)
        yield from _family("held_exits", "gauge", "Exits the mass-exit guard held in the pair's latest run.",
                           {_pair_labels(*k): v for k, v in sorted(self.held_exits.items())})
        yield from _family("destination_key_refused", "gauge",
                           "1 if the destination refused the API key in its latest run (401/403).",
                           {(("destination", k),): v for k, v in sorted(self.key_refused.items())})

    def _latency_lines(self) -> Iterator[str]:
        name = "syncd_delivery_latency_seconds"
        yield f"# HELP {name} Time from sending a request to its response, per destination.\n"
        yield f"# TYPE {name} histogram\n"
        for destination, histogram in sorted(self.latency.items()):
            labels: Labels = (("destination", destination),)
            running = 0
            for bound, count in zip(histogram.bounds, histogram.counts, strict=False):
                running += count
                yield f"{name}_bucket{_fmt_labels((*labels, ('le', _num(bound))))} {running}\n"
            yield f"{name}_bucket{_fmt_labels((*labels, ('le', '+Inf')))} {histogram.total}\n"
            yield f"{name}_sum{_fmt_labels(labels)} {_num(histogram.sum)}\n"
            yield f"{name}_count{_fmt_labels(labels)} {histogram.total}\n"


@dataclass(frozen=True)
class _Gauges:
    """What a reading sets, worked out before the lock is taken."""

    pending: dict[tuple[str, str], int]
    oldest: dict[tuple[str, str], float | None]  # unix seconds
    held: dict[tuple[str, str], int]
    refused: dict[str, int]
    last_successes: dict[tuple[str, str], float]  # unix seconds
    last_run: float | None  # unix seconds

    @classmethod
    def of(cls, reading: Reading) -> _Gauges:
        refused = {p.destination: 0 for p in reading.pairs}
        for p in reading.pairs:
            if p.last_outcome == PairOutcome.STOPPED:  # the sender stopped: 401/403
                refused[p.destination] = 1
        return cls(
            pending={(p.audience, p.destination): p.pending for p in reading.pairs},
            oldest={(p.audience, p.destination): p.oldest_pending_at.timestamp()
                    if p.oldest_pending_at and p.pending else None for p in reading.pairs},
            held={(p.audience, p.destination): p.held_exits for p in reading.pairs},
            refused=refused,
            last_successes={pair: moment.timestamp() for pair, moment in reading.last_successes.items()},
            last_run=reading.runs[0].started_at.timestamp() if reading.runs else None,
        )


class _Histogram:
    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)  # per bucket, not cumulative
        self.sum = 0.0
        self.total = 0

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(self.bounds, value)
        if index < len(self.bounds):
            self.counts[index] += 1
        self.sum += value
        self.total += 1


def _family(name: str, kind: str, help_text: str, samples: Mapping[Labels, float]) -> Iterator[str]:
    full = f"syncd_{name}"
    yield f"# HELP {full} {help_text}\n# TYPE {full} {kind}\n"
    for labels, value in samples.items():
        yield f"{full}{_fmt_labels(labels)} {_num(value)}\n"


def _pair_labels(audience: str, destination: str) -> Labels:
    return (("audience", audience), ("destination", destination))


def _fmt_labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels) + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


@dataclass
class Endpoints:
    """What the HTTP thread asks the daemon. The server is bound before the state database is
    opened (a taken port fails fast), so the daemon fills these in as it starts: until then
    /healthz and /readyz say 503 and / is not served yet."""

    alive: Callable[[], bool] = field(default=lambda: False)
    ready: Callable[[], str] = field(default=lambda: "starting")  # '' when ready, else why not
    page: Callable[[], str] | None = None


Response = tuple[int, str, str]  # status, content type, body


class MetricsServer:
    """GET/HEAD /metrics, /healthz, /readyz and the status page / on a daemon thread; anything
    else is 404, any other method 405."""

    def __init__(self, metrics: Metrics, listen: MetricsConfig, endpoints: Endpoints | None = None) -> None:
        server_class = _IPv6Server if ":" in listen.host else ThreadingHTTPServer
        routes = _routes(metrics, endpoints or Endpoints())
        try:
            self.server = server_class((listen.host, listen.port), _handler_for(routes))
        except OSError as exc:
            raise MetricsError(f"cannot serve metrics on {listen.address}: {exc.strerror}") from None
        self.address = listen.address
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="syncd-metrics", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        if self.thread.is_alive():  # shutdown() would wait forever for a loop never started
            self.server.shutdown()
        self.server.server_close()


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def _routes(metrics: Metrics, endpoints: Endpoints) -> dict[str, Callable[[], Response]]:
    def healthz() -> tuple[int, str]:
        if endpoints.alive():
            return 200, "ok\n"
        return 503, "not alive: the scheduler has not ticked lately (starting, stopping or wedged)\n"

    def readyz() -> tuple[int, str]:
        reason = endpoints.ready()
        return (200, "ready\n") if not reason else (503, f"not ready: {reason}\n")

    def page() -> Response:
        if endpoints.page is None:
            return 503, "text/plain; charset=utf-8", "starting\n"
        try:
            return 200, HTML_TYPE, endpoints.page()
        except SQLAlchemyError as exc:  # the page is read-only: say so, the daemon goes on
            log.warning("status page: cannot read the state database: %s", database_error(exc))
            return 503, "text/plain; charset=utf-8", "the state database cannot be read now\n"

    return {
        "/metrics": lambda: (200, CONTENT_TYPE, metrics.render()),
        "/healthz": _plain(healthz),
        "/readyz": _plain(readyz),
        "/": page,
    }


def _plain(answer: Callable[[], tuple[int, str]]) -> Callable[[], Response]:
    def respond() -> Response:
        status, body = answer()
        return status, "text/plain; charset=utf-8", body
    return respond


def _handler_for(routes: Mapping[str, Callable[[], Response]]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._answer(body=True)

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def _answer(self, body: bool) -> None:
            route = routes.get(self.path.split("?")[0])
            if route is None:
                self.send_error(404, "not found: this server answers /, /metrics, /healthz and /readyz")
                return
            status, content_type, text = route()
            data = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            if content_type == HTML_TYPE:
                self.send_header("Content-Security-Policy", PAGE_POLICY)
                self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            if body:
                self.wfile.write(data)

        def _not_allowed(self) -> None:
            self.send_response(405)
            self.send_header("Allow", "GET, HEAD")
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed

        def log_message(self, format: str, *args: object) -> None:
            pass  # a scrape every 15 s would flood the journal

    return Handler
