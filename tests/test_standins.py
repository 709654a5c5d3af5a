"""The User.com stand-in's mass update, over real HTTP, as User.com documents it:
`PUT users/mass_update_custom_attributes/` with `{"ids", "attribute", "value"}`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from syncd.dev.standins import Fault, UserComStandIn

from conftest import USERCOM_KEY

MASS = "users/mass_update_custom_attributes/"


@pytest.fixture
def client(usercom: UserComStandIn) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Token {USERCOM_KEY}", "Accept": "*/*; version=2"}
    with httpx.Client(base_url=usercom.base_url, headers=headers, timeout=10.0) as http:
        yield http


def _user(client: httpx.Client, custom_id: str, **attributes: Any) -> int:
    answer = client.post("users/update_or_create/", json={"custom_id": custom_id, **attributes})
    assert answer.status_code == 200
    user_id = answer.json()["id"]
    assert type(user_id) is int  # the internal id a mass update names
    return user_id


def _buyers(client: httpx.Client, *custom_ids: str) -> list[int]:
    created = client.post("attributes/", json={"name": "Buyers", "value_type": "boolean",
                                               "content_type": "clientuser"})
    assert created.status_code == 201
    return [_user(client, c) for c in custom_ids]


def test_update_or_create_answers_distinct_ids_never_reused(usercom: UserComStandIn,
                                                            client: httpx.Client) -> None:
    first, second = _user(client, "u1"), _user(client, "u2")
    assert first != second and _user(client, "u1") == first
    assert usercom.delete_user("u2") == second
    assert _user(client, "u3") not in (first, second)
    assert usercom.users()["u1"]["id"] == first


def test_mass_update_sets_the_attribute_on_every_user(usercom: UserComStandIn, client: httpx.Client) -> None:
    ids = _buyers(client, "u1", "u2", "u3")
    before = usercom.routes.get(f"PUT /api/public/{MASS}", 0)
    answer = client.put(MASS, json={"ids": ids[:2], "attribute": "buyers", "value": True})
    assert (answer.status_code, answer.json()) == (200, {"status": "ok"})
    assert {c: u["attributes"].get("buyers") for c, u in usercom.users().items()} == {
        "u1": True, "u2": True, "u3": None}
    # By its display name too, and back to false; each call is one accepted call.
    assert client.put(MASS, json={"ids": ids[:1], "attribute": "Buyers", "value": False}).status_code == 200
    assert usercom.users()["u1"]["attributes"]["buyers"] is False
    assert usercom.routes[f"PUT /api/public/{MASS}"] == before + 2
    assert usercom.accepted()[-1] == {"ids": ids[:1], "attribute": "Buyers", "value": False}


def test_unknown_or_deleted_ids_are_rejected_by_name(usercom: UserComStandIn, client: httpx.Client) -> None:
    ids = _buyers(client, "u1", "u2")
    deleted = usercom.delete_user("u2")
    answer = client.put(MASS, json={"ids": [ids[0], deleted, 999], "attribute": "buyers", "value": True})
    assert answer.status_code == 400
    assert str(deleted) in answer.json()["ids"][0] and "999" in answer.json()["ids"][0]
    assert usercom.users()["u1"]["attributes"] == {}  # all or nothing


@pytest.mark.parametrize("ids", [None, [], [1, "2"], "1", [True]])
def test_ids_must_be_a_non_empty_list_of_integers(usercom: UserComStandIn, client: httpx.Client,
                                                  ids: Any) -> None:
    _buyers(client, "u1")
    body = {"attribute": "buyers", "value": True} | ({} if ids is None else {"ids": ids})
    answer = client.put(MASS, json=body)
    assert answer.status_code == 400 and "ids" in answer.json()


def test_unknown_attribute_is_rejected(usercom: UserComStandIn, client: httpx.Client) -> None:
    ids = _buyers(client, "u1")
    answer = client.put(MASS, json={"ids": ids, "attribute": "sellers", "value": True})
    assert answer.status_code == 400 and "sellers" in answer.json()["attribute"][0]
    assert usercom.accepted()[-1] != {"ids": ids, "attribute": "sellers", "value": True}


@pytest.mark.parametrize("value", ["true", 1, None])
def test_a_boolean_attribute_needs_a_json_bool(usercom: UserComStandIn, client: httpx.Client,
                                               value: Any) -> None:
    ids = _buyers(client, "u1")
    answer = client.put(MASS, json={"ids": ids, "attribute": "buyers", "value": value})
    assert answer.status_code == 400 and "boolean" in answer.json()["value"][0]
    assert usercom.users()["u1"]["attributes"] == {}


def test_a_string_attribute_needs_a_string(usercom: UserComStandIn, client: httpx.Client) -> None:
    ids = [_user(client, "u1", plan="gold")]  # an undeclared trait becomes a string attribute
    assert client.put(MASS, json={"ids": ids, "attribute": "plan", "value": True}).status_code == 400
    assert client.put(MASS, json={"ids": ids, "attribute": "plan", "value": "free"}).status_code == 200
    assert usercom.users()["u1"]["attributes"]["plan"] == "free"


def test_wrong_token_or_version_is_refused(usercom: UserComStandIn, client: httpx.Client) -> None:
    ids = _buyers(client, "u1")
    body = {"ids": ids, "attribute": "buyers", "value": True}
    assert client.put(MASS, json=body, headers={"Authorization": "Token wrong"}).status_code == 403
    assert client.put(MASS, json=body, headers={"Accept": "application/json"}).status_code == 406
    assert usercom.users()["u1"]["attributes"] == {}


def test_fault_injection_applies_to_mass_updates(usercom: UserComStandIn, client: httpx.Client) -> None:
    ids = _buyers(client, "u1")
    body = {"ids": ids, "attribute": "buyers", "value": True}
    usercom.fail_next(1, Fault(503, retry_after="2"))
    failed = client.put(MASS, json=body)
    assert (failed.status_code, failed.headers["Retry-After"]) == (503, "2")
    assert usercom.users()["u1"]["attributes"] == {}
    assert client.put(MASS, json=body).status_code == 200
    assert usercom.users()["u1"]["attributes"] == {"buyers": True}
    assert usercom.routes[f"PUT /api/public/{MASS}"] == 2  # the faulted request is counted too
