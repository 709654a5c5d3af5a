"""What every stand-in shares: a real HTTP server on a local port, scripted faults (5xx,
429 with Retry-After, slow answers, a token-bucket rate limit), counters per route and
a record of what it accepted (`GET /_standin/received`)."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit

RECEIVED = "/_standin/received"


@dataclass(frozen=True)
class Fault:
    """A scripted answer that replaces normal handling; with `route` ("METHOD /path"), it
    waits for a request to that route and leaves the others alone."""

    status: int
    retry_after: str | None = None
    body: str = ""
    delay: float = 0.0
    route: str | None = None


Reply = tuple[int, Any, dict[str, str]]  # status, JSON body (or raw str), headers


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    standin: StandIn

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up (timeouts, benchmarks) is not an error here


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body leave in two writes; with Nagle's algorithm the body then waits
    # for the client's delayed ACK (40 ms) on every keep-alive request: ~170 calls/s.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def _dispatch(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        status, body, headers = self.server.standin.handle(method, self.path, dict(self.headers), raw)
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        try:
            self.send_response(status)
            content_type = "text/html" if isinstance(body, str) else "application/json"
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


class StandIn:
    """One HTTP server (port 0: any free port) with fault injection. The port is bound when
    the object is made, so a taken port fails here (OSError), before anything else starts."""

    name = "stand-in"

    def __init__(self, api_key: str, port: int = 0, host: str = "127.0.0.1") -> None:
        self.api_key = api_key
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = _Server((host, port), _Handler)
        self._server.standin = self
        self._thread: threading.Thread | None = None
        self.down = False
        self.delay = 0.0
        self.rate_limit: float | None = None
        # Called with the number of accepted calls after each one is applied and before
        # it is answered: tests use it to kill the client between our 2xx and its commit.
        self.after_accept: Callable[[int], None] | None = None
        self.reset()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def service_url(self) -> str:
        """The address a client configures (an endpoint, an API's base URL)."""
        return self.url

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> StandIn:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

    def reset(self) -> None:
        with self._lock:
            self.received: list[Any] = []
            self.accepted_calls = 0
            self.requests = 0
            self.routes: dict[str, int] = {}  # requests per "METHOD /path", faults and 429s included
            self.rate_limited = 0
            self._faults: list[Fault] = []
            self._tokens = 0.0
            self._refilled = time.monotonic()

    def accepted(self) -> list[Any]:
        with self._lock:
            return list(self.received)

    def fail_next(self, n: int, fault: Fault) -> None:
        with self._lock:
            self._faults.extend([fault] * n)

    def heal(self) -> None:
        """Back to normal service; what was received stays."""
        with self._lock:
            self._faults = []
        self.down, self.delay, self.rate_limit, self.after_accept = False, 0.0, None, None

    # -- request handling ------------------------------------------------------------------

    def handle(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> Reply:
        if path.startswith(RECEIVED):
            return 200, self.accepted(), {}
        route = f"{method} {urlsplit(path).path}"
        with self._lock:
            self.requests += 1
            self.routes[route] = self.routes.get(route, 0) + 1
            fault = self._take_fault(route)
        if self.down:
            return 503, "<html><body>Service Unavailable</body></html>", {}
        if fault is not None:
            self._sleep(fault.delay)
            extra = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            return fault.status, fault.body, extra
        if self.rate_limit and not self._take_token():
            return 429, {"error": "rate limit exceeded"}, {"Retry-After": "1"}
        reply = self.route_raw(method, path, headers, raw)
        # A slow server applies the change, then answers late: a client that times out
        # cannot know the change was applied (the "uncertain" case).
        self._sleep(self.delay)
        return reply

    def route_raw(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> Reply:
        """The body as JSON, then `route`; a service with its own size limits overrides this."""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            return 400, {"error": "body is not JSON"}, {}
        return self.route(method, path, headers, body)

    def route(self, method: str, path: str, headers: dict[str, str], body: Any) -> Reply:
        raise NotImplementedError

    def _take_fault(self, route: str) -> Fault | None:
        for index, fault in enumerate(self._faults):
            if fault.route is None or fault.route == route:
                return self._faults.pop(index)
        return None

    def _take_token(self) -> bool:
        assert self.rate_limit
        with self._lock:
            now = time.monotonic()
            burst = max(1.0, self.rate_limit)
            self._tokens = min(burst, self._tokens + (now - self._refilled) * self.rate_limit)
            self._refilled = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            self.rate_limited += 1
            return False

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stopping.is_set() and time.monotonic() < deadline:
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def _accept(self, *items: Any) -> None:
        """Record one accepted call (its body, or a batch's events), then the test's hook."""
        with self._lock:
            self.received.extend(items)
            self.accepted_calls += 1
            count = self.accepted_calls
        if self.after_accept is not None:
            self.after_accept(count)


def basic_auth(key: str) -> str:
    """Segment's scheme, also Nat's: the key as the user name, no password."""
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


S = TypeVar("S", bound=StandIn)


class PortTaken(Exception):
    """A stand-in could not listen where it was told to (one line, for a person)."""


def listen(kind: type[S], key: str, port: int, host: str = "127.0.0.1", **options: Any) -> S:
    """`kind(key, port, host)`, with a taken port as one line naming the service and address."""
    try:
        return kind(key, port=port, host=host, **options)
    except OSError as exc:
        raise PortTaken(f"cannot start the {kind.name} stand-in on {host}:{port}: "
                        f"{exc.strerror or exc}") from None
