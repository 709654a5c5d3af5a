"""User.com's public REST API, as syncd uses it: Token auth, the version header, typed custom
attributes, users by custom id with User.com's own integer ids, mass updates and the user
listing.

What the stand-in answers where User.com's documents are silent (chosen as the most
plausible for a Django REST framework API, which User.com's answers show it is:
`{"detail": ...}`, `count`/`next`/`previous`/`results`):

- `GET users/` is cursor-paginated in id order: `page_size` (default 50, capped at 100;
  an invalid one means the default), `cursor` as given in `next`/`previous` (opaque; an
  invalid one is `404 {"detail": "Invalid cursor"}`). Each result has its integer `id`,
  `email`, `attributes` (by standard name) and the custom id under `custom_id`, or under
  `user_id` when the stand-in is made with `id_field="user_id"` (as some API versions name
  it); a user without a custom id has it `null`. `count` is every user, on every page.
- `PUT users/mass_update_custom_attributes/` is all or nothing and validates like a
  serializer: field errors first, all of them in one `400` (`ids` naming the unknown ids,
  `attribute` when no attribute has that name: `Attribute "x" does not exist.`), then the
  value against the attribute's type, a `400` naming both
  (`{"value": ["Attribute \\"x\\" is of type string: a valid string is required."]}`).
  No conversion, unlike `update_or_create`, which converts what it can and ignores the rest.
- Requests are counted per endpoint (`calls()`), faulted and rate-limited ones included.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import json
import re
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from syncd.dev.standins.base import Reply, StandIn

_VALUE_TYPES = ("string", "integer", "float", "boolean", "date", "datetime", "fixed")
PAGE_SIZE = 50  # the attribute listing's pages
LIST_DEFAULT, LIST_MAX = 50, 100  # the user listing's page size: default, cap
API = "/api/public/"
LISTING = f"GET {API}users/"
MASS_UPDATE = f"PUT {API}users/mass_update_custom_attributes/"
UPDATE_OR_CREATE = f"POST {API}users/update_or_create/"
ATTRIBUTES = (f"GET {API}attributes/", f"POST {API}attributes/")
ID_FIELDS = ("custom_id", "user_id")


class UserComStandIn(StandIn):
    """User.com's public REST API: Token auth, version header, typed custom attributes."""

    name = "User.com"
    LISTING, MASS_UPDATE, UPDATE_OR_CREATE = LISTING, MASS_UPDATE, UPDATE_OR_CREATE

    def __init__(self, api_key: str, port: int = 0, host: str = "127.0.0.1",
                 id_field: str = "custom_id") -> None:
        if id_field not in ID_FIELDS:
            raise ValueError(f"id_field must be one of {ID_FIELDS}, not {id_field!r}")
        self.id_field = id_field  # what the listing names the custom id
        super().__init__(api_key, port, host)

    @property
    def service_url(self) -> str:
        return self.base_url

    @property
    def base_url(self) -> str:
        return self.url + API

    def reset(self) -> None:
        super().reset()
        with self._lock:
            self._attributes: list[dict[str, Any]] = []
            self._users: dict[str, dict[str, Any]] = {}  # by custom id (else email, else "#id")
            self._by_id: dict[int, dict[str, Any]] = {}
            self._ids: list[int] = []  # sorted: the listing's order
            # Ids are never reused, not even after a reset: as in a real database, an id a
            # client learned before never names another user.
            self._next_id = getattr(self, "_next_id", 1)
            self._next_attribute_id = getattr(self, "_next_attribute_id", 1)

    # -- what User.com holds, and changing it as its dashboard would ------------------------

    def attributes(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(a) for a in self._attributes]

    def users(self) -> dict[str, dict[str, Any]]:
        """What User.com holds: per custom_id, the internal id, email and typed attributes."""
        with self._lock:
            return {k: {"id": u["id"], "email": u["email"], "attributes": dict(u["attributes"])}
                    for k, u in self._users.items()}

    def seed_users(self, custom_ids: Iterable[str | None], emails: bool = True) -> list[int]:
        """Users that existed before syncd ever ran (no call recorded); `None`: a user without
        a custom id. Email `<custom id>@example.com` (or `user<id>@…`) unless `emails=False`.
        Returns their ids, in order."""
        created = []
        with self._lock:
            for custom_id in custom_ids:
                email = f"{custom_id or 'user' + str(self._next_id)}@example.com" if emails else None
                created.append(self._new_user(custom_id, email)["id"])
        return created

    def delete_user(self, custom_id: str) -> int:
        """Delete a user as User.com's dashboard would; returns its internal id (now unknown)."""
        with self._lock:
            user = self._users.pop(custom_id)
            del self._by_id[user["id"]]
            del self._ids[bisect.bisect_left(self._ids, user["id"])]
            return int(user["id"])

    def add_attribute(self, name: str, value_type: str = "boolean") -> None:
        """An attribute created in the dashboard (no call recorded)."""
        assert value_type in _VALUE_TYPES, value_type
        with self._lock:
            self._new_attribute(name, value_type)

    def delete_attribute(self, name: str) -> None:
        """Delete an attribute and every user's value of it, as the dashboard would."""
        with self._lock:
            attribute = self._find_attribute(name)
            if attribute is None:
                raise KeyError(name)
            self._attributes.remove(attribute)
            for user in self._by_id.values():
                user["attributes"].pop(attribute["name_std"], None)

    def set_attribute_type(self, name: str, value_type: str) -> None:
        """Change an attribute's type in the dashboard: values become text for `string`
        (`true`, not `True`), values that do not fit another type are dropped."""
        assert value_type in _VALUE_TYPES, value_type
        with self._lock:
            attribute = self._find_attribute(name)
            if attribute is None:
                raise KeyError(name)
            attribute["value_type"] = value_type
            std = attribute["name_std"]
            for user in self._by_id.values():
                if std not in user["attributes"]:
                    continue
                value = user["attributes"][std]
                if value_type == "string" and not isinstance(value, str):
                    user["attributes"][std] = json.dumps(value)
                elif not _matches(value_type, value):
                    del user["attributes"][std]

    def calls(self) -> dict[str, int]:
        """Requests per endpoint (faulted and rate-limited ones included): `listing`
        (`GET users/`), `mass_update`, `update_or_create`, `attributes` (list and create),
        and `other` (anything else, 404s included)."""
        with self._lock:
            routes = dict(self.routes)
        counts = {"listing": routes.pop(LISTING, 0), "mass_update": routes.pop(MASS_UPDATE, 0),
                  "update_or_create": routes.pop(UPDATE_OR_CREATE, 0),
                  "attributes": sum(routes.pop(route, 0) for route in ATTRIBUTES)}
        counts["other"] = sum(routes.values())
        return counts

    # -- the API -----------------------------------------------------------------------------

    def route(self, method: str, path: str, headers: dict[str, str], body: Any) -> Reply:
        if headers.get("Authorization") is None:
            return 401, {"detail": "Authentication credentials were not provided."}, {}
        if headers.get("Authorization") != f"Token {self.api_key}":
            return 403, {"detail": "Invalid token."}, {}
        if headers.get("Accept") != "*/*; version=2":
            return 406, {"detail": "Could not satisfy the request Accept header."}, {}
        parts = urlsplit(path)
        handlers: dict[str, Callable[[Any, str, str], Reply]] = {
            ATTRIBUTES[0]: self._list_attributes,
            ATTRIBUTES[1]: self._create_attribute,
            LISTING: self._list_users,
            UPDATE_OR_CREATE: self._update_or_create,
            MASS_UPDATE: self._mass_update,
        }
        handler = handlers.get(f"{method} {parts.path}")
        if handler is None:
            return 404, {"detail": "Not found."}, {}
        # Links in answers name the address the client used, as the real API's do.
        base = f"http://{headers['Host']}{API}" if headers.get("Host") else self.base_url
        return handler(body, parts.query, base)

    def _list_attributes(self, _body: Any, query: str, base: str) -> Reply:
        page = int(parse_qs(query).get("page", ["1"])[0])
        items = self.attributes()
        chunk = items[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]
        more = page * PAGE_SIZE < len(items)
        next_url = f"{base}attributes/?page={page + 1}" if more else None
        return 200, {"count": len(items), "next": next_url, "previous": None, "results": chunk}, {}

    def _list_users(self, _body: Any, query: str, base: str) -> Reply:
        params = parse_qs(query)
        size = _page_size(params.get("page_size", [""])[0])
        cursor = _decode_cursor(params["cursor"][0]) if "cursor" in params else ("a", 0)
        if cursor is None:
            return 404, {"detail": "Invalid cursor"}, {}
        with self._lock:
            ids = self._ids
            if cursor[0] == "a":  # the page after an id
                start = bisect.bisect_right(ids, cursor[1])
                end = min(len(ids), start + size)
            else:  # the page before an id
                end = bisect.bisect_left(ids, cursor[1])
                start = max(0, end - size)
            page = ids[start:end]
            results = [self._listed(self._by_id[i]) for i in page]
            more_after, more_before, count = end < len(ids), start > 0, len(ids)
        keep = {"page_size": params["page_size"][0]} if "page_size" in params else {}

        def link(direction: str, anchor: int) -> str:
            return f"{base}users/?" + urlencode({"cursor": _encode_cursor(direction, anchor), **keep})

        return 200, {
            "count": count,
            "next": link("a", page[-1]) if page and more_after else None,
            "previous": link("b", page[0]) if page and more_before else None,
            "results": results,
        }, {}

    def _listed(self, user: dict[str, Any]) -> dict[str, Any]:
        return {"id": user["id"], self.id_field: user["custom_id"], "email": user["email"],
                "attributes": dict(user["attributes"])}

    def _create_attribute(self, body: Any, _query: str, _base: str) -> Reply:
        if not isinstance(body, dict) or not body.get("name"):
            return 400, {"name": ["This field is required."]}, {}
        if body.get("value_type") not in _VALUE_TYPES:
            return 400, {"value_type": [f"\"{body.get('value_type')}\" is not a valid choice."]}, {}
        if body.get("content_type") != "clientuser":
            return 400, {"content_type": ["Invalid content type."]}, {}
        with self._lock:
            if self._find_attribute(str(body["name"])) is not None:
                return 400, {"name": ["Attribute with this name already exists."]}, {}
            attribute = self._new_attribute(str(body["name"]), str(body["value_type"]))
        self._accept(body)
        return 201, attribute, {}

    def _new_attribute(self, name: str, value_type: str) -> dict[str, Any]:
        attribute = {"id": self._next_attribute_id, "name": name, "name_std": _name_std(name),
                     "value_type": value_type, "content_type": "clientuser"}
        self._attributes.append(attribute)
        self._next_attribute_id += 1  # never reused, also after a deletion
        return attribute

    def _new_user(self, custom_id: str | None, email: str | None) -> dict[str, Any]:
        """A new user under the next id; ids are never reused, also after a deletion, as in a
        real database. Call with the lock held."""
        user: dict[str, Any] = {"id": self._next_id, "custom_id": custom_id, "email": email, "attributes": {}}
        self._users[str(custom_id or email or f"#{self._next_id}")] = user
        self._by_id[self._next_id] = user
        self._ids.append(self._next_id)  # ids only grow: the list stays sorted
        self._next_id += 1
        return user

    def _update_or_create(self, body: Any, _query: str, _base: str) -> Reply:
        if not isinstance(body, dict) or not (body.get("custom_id") or body.get("email")):
            return 400, {"custom_id": ["This field is required."]}, {}
        with self._lock:
            custom_id, email = body.get("custom_id"), body.get("email")
            user = self._users.get(str(custom_id or email)) or self._new_user(custom_id, email)
            if email:
                user["email"] = email
            for name, value in body.items():
                if name not in ("custom_id", "email"):
                    self._set_attribute(user, name, value)
            reply = {**user, "attributes": dict(user["attributes"])}
        self._accept(body)
        return 200, reply, {}

    def _mass_update(self, body: Any, _query: str, _base: str) -> Reply:
        """`{"ids": [...], "attribute": name, "value": v}`: all or nothing, like the real API."""
        if not isinstance(body, dict):
            return 400, {"non_field_errors": ["Invalid data. Expected a dictionary."]}, {}
        with self._lock:
            errors = self._mass_update_errors(body)
            if errors:
                return 400, errors, {}
            attribute = self._find_attribute(str(body["attribute"]))
            assert attribute is not None
            if "value" not in body or not _matches(attribute["value_type"], body["value"]):
                kind = attribute["value_type"]
                return 400, {"value": [f"Attribute \"{body['attribute']}\" is of type {kind}: "
                                       f"a valid {kind} is required."]}, {}
            for user_id in body["ids"]:
                self._set_attribute(self._by_id[user_id], attribute["name"], body["value"])
        self._accept(body)
        return 200, {"status": "ok"}, {}

    def _mass_update_errors(self, body: dict[str, Any]) -> dict[str, list[str]]:
        """Every field error at once, as a serializer reports them. Call with the lock held."""
        errors = {}
        ids = body.get("ids")
        if not isinstance(ids, list) or not ids or not all(type(i) is int for i in ids):
            errors["ids"] = ["A non-empty list of user ids (integers) is required."]
        else:
            unknown = [i for i in ids if i not in self._by_id]
            if unknown:
                errors["ids"] = [f"Users with these ids do not exist: {unknown}."]
        if self._find_attribute(str(body.get("attribute") or "")) is None:
            errors["attribute"] = [f"Attribute \"{body.get('attribute')}\" does not exist."]
        return errors

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


def _page_size(text: str) -> int:
    try:
        size = int(text)
    except ValueError:
        return LIST_DEFAULT
    return min(size, LIST_MAX) if size > 0 else LIST_DEFAULT


def _encode_cursor(direction: str, anchor: int) -> str:
    return base64.urlsafe_b64encode(f"{direction}={anchor}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[str, int] | None:
    """("a", id): the page after that id; ("b", id): the page before it; None: invalid."""
    try:
        direction, anchor = base64.urlsafe_b64decode(cursor.encode()).decode().split("=")
        position = int(anchor)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    return (direction, position) if direction in ("a", "b") and position >= 0 else None


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
