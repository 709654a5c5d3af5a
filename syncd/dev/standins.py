"""Local stand-ins of Nat and User.com: real HTTP servers on 127.0.0.1.

They behave like the documented services (auth, required fields, User.com's typed
attributes) and can be told to misbehave (5xx, 429 with Retry-After, slow answers,
rate limits), so the tests, the demo and the benchmarks exercise syncd's real HTTP
path. `python -m syncd.dev.standins` runs both until interrupted.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class Fault:
    """A scripted answer that replaces normal handling."""

    status: int
    retry_after: str | None = None
    body: str = ""
    delay: float = 0.0


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
    """One HTTP server on 127.0.0.1 (port 0: any free port) with fault injection."""

    def __init__(self, api_key: str, port: int = 0) -> None:
        self.api_key = api_key
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = _Server(("127.0.0.1", port), _Handler)
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

    def start(self) -> StandIn:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

    def reset(self) -> None:
        with self._lock:
            self.received: list[dict[str, Any]] = []
            self.requests = 0
            self.routes: dict[str, int] = {}  # requests per "METHOD /path", faults and 429s included
            self.rate_limited = 0
            self._faults: list[Fault] = []
            self._tokens = 0.0
            self._refilled = time.monotonic()

    def accepted(self) -> list[dict[str, Any]]:
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
        if path.startswith("/_standin/received"):
            return 200, self.accepted(), {}
        with self._lock:
            self.requests += 1
            route = f"{method} {urlsplit(path).path}"
            self.routes[route] = self.routes.get(route, 0) + 1
            fault = self._faults.pop(0) if self._faults else None
        if self.down:
            return 503, "<html><body>Service Unavailable</body></html>", {}
        if fault is not None:
            self._sleep(fault.delay)
            extra = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            return fault.status, fault.body, extra
        if self.rate_limit and not self._take_token():
            return 429, {"error": "rate limit exceeded"}, {"Retry-After": "1"}
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            return 400, {"error": "body is not JSON"}, {}
        reply = self.route(method, path, headers, body)
        # A slow server applies the change, then answers late: a client that times out
        # cannot know the change was applied (the "uncertain" case).
        self._sleep(self.delay)
        return reply

    def route(self, method: str, path: str, headers: dict[str, str], body: Any) -> Reply:
        raise NotImplementedError

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

    def _accept(self, body: dict[str, Any]) -> None:
        with self._lock:
            self.received.append(body)
            count = len(self.received)
        if self.after_accept is not None:
            self.after_accept(count)


class NatStandIn(StandIn):
    """Nat: Segment-format Identify calls at /segment, Basic auth with the key as user."""

    @property
    def endpoint(self) -> str:
        return self.url + "/segment"

    def route(self, method: str, path: str, headers: dict[str, str], body: Any) -> Reply:
        if urlsplit(path).path != "/segment":
            return 404, {"error": "not found"}, {}
        if method != "POST":
            return 405, {"error": "method not allowed"}, {}
        expected = "Basic " + base64.b64encode(f"{self.api_key}:".encode()).decode()
        if headers.get("Authorization") != expected:
            return 401, {"error": "invalid api key"}, {}
        problem = _nat_problem(body)
        if problem:
            return 400, {"error": problem}, {}
        self._accept(body)
        return 200, {"success": True}, {}

    def contacts(self) -> dict[str, dict[str, Any]]:
        """What Nat holds: per email, the traits of every accepted call merged in order."""
        result: dict[str, dict[str, Any]] = {}
        for call in self.accepted():
            traits = call.get("traits") or {}
            email = str(traits.get("email") or call.get("email"))
            result.setdefault(email, {}).update(traits)
        return result


def _nat_problem(body: Any) -> str | None:
    if not isinstance(body, dict) or body.get("type") != "identify":
        return "only identify calls are accepted"
    traits: dict[str, Any] = body["traits"] if isinstance(body.get("traits"), dict) else {}
    email = traits.get("email") or body.get("email")
    if not email:
        return "email is required"
    if not isinstance(email, str) or "@" not in email:
        return "email is not valid"
    timestamp = body.get("timestamp")
    try:
        datetime.fromisoformat(str(timestamp).replace("Z", "+00:00"))
    except ValueError:
        return "timestamp is required"
    return None


_VALUE_TYPES = ("string", "integer", "float", "boolean", "date", "datetime", "fixed")
PAGE_SIZE = 50


class UserComStandIn(StandIn):
    """User.com's public REST API: Token auth, version header, typed custom attributes."""

    def __init__(self, api_key: str, port: int = 0) -> None:
        super().__init__(api_key, port)
        self._attributes: list[dict[str, Any]] = []
        self._users: dict[str, dict[str, Any]] = {}
        self._keys_by_id: dict[int, str] = {}
        self._next_id = 1

    @property
    def base_url(self) -> str:
        return self.url + "/api/public/"

    def reset(self) -> None:
        super().reset()
        self._attributes, self._users, self._keys_by_id, self._next_id = [], {}, {}, 1

    def attributes(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(a) for a in self._attributes]

    def users(self) -> dict[str, dict[str, Any]]:
        """What User.com holds: per custom_id, the internal id, email and typed attributes."""
        with self._lock:
            return {k: {"id": u["id"], "email": u["email"], "attributes": dict(u["attributes"])}
                    for k, u in self._users.items()}

    def delete_user(self, custom_id: str) -> int:
        """Delete a user as User.com's dashboard would; returns its internal id (now unknown)."""
        with self._lock:
            user = self._users.pop(custom_id)
            del self._keys_by_id[user["id"]]
            return int(user["id"])

    def route(self, method: str, path: str, headers: dict[str, str], body: Any) -> Reply:
        if headers.get("Authorization") is None:
            return 401, {"detail": "Authentication credentials were not provided."}, {}
        if headers.get("Authorization") != f"Token {self.api_key}":
            return 403, {"detail": "Invalid token."}, {}
        if headers.get("Accept") != "*/*; version=2":
            return 406, {"detail": "Could not satisfy the request Accept header."}, {}
        parts = urlsplit(path)
        handlers: dict[tuple[str, str], Callable[[Any, str], Reply]] = {
            ("GET", "/api/public/attributes/"): self._list_attributes,
            ("POST", "/api/public/attributes/"): self._create_attribute,
            ("POST", "/api/public/users/update_or_create/"): self._update_or_create,
            ("PUT", "/api/public/users/mass_update_custom_attributes/"): self._mass_update,
        }
        handler = handlers.get((method, parts.path))
        if handler is None:
            return 404, {"detail": "Not found."}, {}
        return handler(body, parts.query)

    def _list_attributes(self, _body: Any, query: str) -> Reply:
        page = int(parse_qs(query).get("page", ["1"])[0])
        items = self.attributes()
        chunk = items[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]
        more = page * PAGE_SIZE < len(items)
        next_url = f"{self.base_url}attributes/?page={page + 1}" if more else None
        return 200, {"count": len(items), "next": next_url, "previous": None, "results": chunk}, {}

    def _create_attribute(self, body: Any, _query: str) -> Reply:
        if not isinstance(body, dict) or not body.get("name"):
            return 400, {"name": ["This field is required."]}, {}
        if body.get("value_type") not in _VALUE_TYPES:
            return 400, {"value_type": [f"\"{body.get('value_type')}\" is not a valid choice."]}, {}
        if body.get("content_type") != "clientuser":
            return 400, {"content_type": ["Invalid content type."]}, {}
        with self._lock:
            std = _name_std(str(body["name"]))
            if any(a["name_std"] == std for a in self._attributes):
                return 400, {"name": ["Attribute with this name already exists."]}, {}
            attribute = self._new_attribute(str(body["name"]), str(body["value_type"]))
        self._accept(body)
        return 201, attribute, {}

    def _new_attribute(self, name: str, value_type: str) -> dict[str, Any]:
        attribute = {"id": len(self._attributes) + 1, "name": name, "name_std": _name_std(name),
                     "value_type": value_type, "content_type": "clientuser"}
        self._attributes.append(attribute)
        return attribute

    def _update_or_create(self, body: Any, _query: str) -> Reply:
        if not isinstance(body, dict) or not (body.get("custom_id") or body.get("email")):
            return 400, {"custom_id": ["This field is required."]}, {}
        with self._lock:
            key = str(body.get("custom_id") or body["email"])
            user = self._users.get(key)
            if user is None:
                # Ids are never reused, also after a deletion, as in a real database.
                user = {"id": self._next_id, "custom_id": body.get("custom_id"), "email": None,
                        "attributes": {}}
                self._users[key], self._keys_by_id[self._next_id] = user, key
                self._next_id += 1
            if body.get("email"):
                user["email"] = body["email"]
            for name, value in body.items():
                if name not in ("custom_id", "email"):
                    self._set_attribute(user, name, value)
            reply = {**user, "attributes": dict(user["attributes"])}
        self._accept(body)
        return 200, reply, {}

    def _mass_update(self, body: Any, _query: str) -> Reply:
        """`{"ids": [...], "attribute": name, "value": v}`: all or nothing, like the real API."""
        if not isinstance(body, dict):
            return 400, {"non_field_errors": ["Invalid data. Expected a dictionary."]}, {}
        ids = body.get("ids")
        if not isinstance(ids, list) or not ids or not all(type(i) is int for i in ids):
            return 400, {"ids": ["A non-empty list of user ids (integers) is required."]}, {}
        with self._lock:
            unknown = [i for i in ids if i not in self._keys_by_id]
            if unknown:
                return 400, {"ids": [f"Users with these ids do not exist: {unknown}."]}, {}
            attribute = self._find_attribute(str(body.get("attribute") or ""))
            if attribute is None:
                return 400, {"attribute": [f"Attribute \"{body.get('attribute')}\" does not exist."]}, {}
            if "value" not in body or not _matches(attribute["value_type"], body["value"]):
                return 400, {"value": [f"A valid {attribute['value_type']} is required."]}, {}
            for user_id in ids:
                user = self._users[self._keys_by_id[user_id]]
                self._set_attribute(user, attribute["name"], body["value"])
        self._accept(body)
        return 200, {"status": "ok"}, {}

    def _find_attribute(self, name: str) -> dict[str, Any] | None:
        std = _name_std(name)
        return next((a for a in self._attributes if a["name_std"] == std), None)

    def _set_attribute(self, user: dict[str, Any], name: str, value: Any) -> None:
        std = _name_std(name)
        attribute = self._find_attribute(name)
        if attribute is None:  # documented: an undeclared trait becomes a *string* attribute
            attribute = self._new_attribute(name, "string")
        if attribute["value_type"] == "boolean":
            converted = _to_bool(value)
            if converted is not None:
                user["attributes"][std] = converted
        else:
            user["attributes"][std] = "" if value is None else str(value)


def _name_std(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _matches(value_type: str, value: Any) -> bool:
    """Whether a JSON value fits an attribute's type (mass updates do not convert)."""
    if value_type == "boolean":
        return isinstance(value, bool)
    if value_type == "integer":
        return type(value) is int
    if value_type == "float":
        return type(value) in (int, float)
    return isinstance(value, str)


def _to_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if value in (1, 0, "1", "0"):
        return bool(int(value))
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description="Run local stand-ins of Nat and User.com.")
    parser.add_argument("--nat-port", type=int, default=18081)
    parser.add_argument("--usercom-port", type=int, default=18082)
    parser.add_argument("--nat-key", default="demo-nat-key")
    parser.add_argument("--usercom-key", default="demo-usercom-key")
    parser.add_argument("--rate-limit", type=float, default=None, help="requests per second, else 429")
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    nat, uc = NatStandIn(args.nat_key, args.nat_port), UserComStandIn(args.usercom_key, args.usercom_port)
    with nat, uc:
        nat.rate_limit = uc.rate_limit = args.rate_limit
        print(f"Nat stand-in at {nat.endpoint}; User.com stand-in at {uc.base_url}", flush=True)
        stop.wait()


if __name__ == "__main__":
    main()
