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


# -- the user listing (issue 17): GET users/ ----------------------------------------------

LISTING = "users/"


def _pages(client: httpx.Client, url: str = LISTING, **params: Any) -> list[dict[str, Any]]:
    """Every page of the listing, following `next` as a client would."""
    pages = [client.get(url, params=params or None).json()]
    while pages[-1]["next"]:
        answer = client.get(pages[-1]["next"])
        assert answer.status_code == 200
        pages.append(answer.json())
    return pages


def test_listing_pages_every_user_once_in_id_order(usercom: UserComStandIn, client: httpx.Client) -> None:
    ids = usercom.seed_users([f"c{i}" for i in range(120)] + [None] * 5 + [f"d{i}" for i in range(125)])
    pages = _pages(client, page_size=100)
    assert [len(p["results"]) for p in pages] == [100, 100, 50]
    assert {p["count"] for p in pages} == {250}
    listed = [r for p in pages for r in p["results"]]
    assert [r["id"] for r in listed] == ids and all(type(i) is int for i in ids)
    assert listed[0] == {"id": ids[0], "custom_id": "c0", "email": "c0@example.com", "attributes": {}}
    assert [r["custom_id"] for r in listed[120:125]] == [None] * 5  # users without a custom id
    assert pages[0]["previous"] is None and pages[1]["previous"] and pages[2]["previous"]
    back = client.get(pages[1]["previous"]).json()
    assert back["results"] == pages[0]["results"] and back["previous"] is None


@pytest.mark.parametrize(("page_size", "expected"), [(None, 50), ("100", 100), ("500", 100), ("7", 7),
                                                      ("0", 50), ("-3", 50), ("many", 50)])
def test_page_size_is_capped_at_100(usercom: UserComStandIn, client: httpx.Client,
                                    page_size: str | None, expected: int) -> None:
    usercom.seed_users(f"c{i}" for i in range(230))
    params = {} if page_size is None else {"page_size": page_size}
    first = client.get(LISTING, params=params).json()
    assert len(first["results"]) == expected
    assert len(client.get(first["next"]).json()["results"]) == expected  # `next` keeps the size


def test_listing_names_the_custom_id_user_id_when_told() -> None:
    with UserComStandIn(USERCOM_KEY, id_field="user_id") as usercom:
        usercom.seed_users(["c1", None], emails=False)
        headers = {"Authorization": f"Token {USERCOM_KEY}", "Accept": "*/*; version=2"}
        results = httpx.get(usercom.base_url + LISTING, headers=headers).json()["results"]
    assert [(r["user_id"], r["email"]) for r in results] == [("c1", None), (None, None)]
    assert all("custom_id" not in r for r in results)
    with pytest.raises(ValueError, match="id_field"):
        UserComStandIn(USERCOM_KEY, id_field="uid")


@pytest.mark.parametrize("cursor", ["not-a-cursor", "eD0x", "YT14", "YT0tMQ==", "%%%"])
def test_an_invalid_cursor_is_404(usercom: UserComStandIn, client: httpx.Client, cursor: str) -> None:
    usercom.seed_users(["c1"])
    answer = client.get(LISTING, params={"cursor": cursor})
    assert (answer.status_code, answer.json()) == (404, {"detail": "Invalid cursor"})


def test_the_cursor_survives_changes_during_the_listing(usercom: UserComStandIn,
                                                        client: httpx.Client) -> None:
    usercom.seed_users(f"c{i}" for i in range(10))
    first = client.get(LISTING, params={"page_size": 4}).json()
    usercom.delete_user("c5")  # on the next page
    _user(client, "late")  # created meanwhile: listed at the end
    rest = _pages(client, first["next"])
    listed = [r["custom_id"] for p in (first, *rest) for r in p["results"]]
    assert listed == ["c0", "c1", "c2", "c3", "c4", "c6", "c7", "c8", "c9", "late"]
    assert rest[0]["count"] == 10


def test_the_listing_needs_the_token(usercom: UserComStandIn, client: httpx.Client) -> None:
    usercom.seed_users(["c1"])
    assert httpx.get(usercom.base_url + LISTING).status_code == 401
    assert client.get(LISTING, headers={"Authorization": "Token wrong"}).status_code == 403
    assert usercom.accepted() == []


def test_a_fault_for_one_route_leaves_the_others_alone(usercom: UserComStandIn,
                                                       client: httpx.Client) -> None:
    ids = _buyers(client, "u1")
    usercom.fail_next(1, Fault(429, retry_after="3", route=UserComStandIn.LISTING))
    usercom.fail_next(1, Fault(502, route=UserComStandIn.LISTING))
    assert client.put(MASS, json={"ids": ids, "attribute": "buyers", "value": True}).status_code == 200
    limited = client.get(LISTING)
    assert (limited.status_code, limited.headers["Retry-After"]) == (429, "3")
    assert client.get(LISTING).status_code == 502
    assert client.get(LISTING).json()["count"] == 1


def test_calls_are_counted_per_endpoint(usercom: UserComStandIn, client: httpx.Client) -> None:
    usercom.seed_users(f"c{i}" for i in range(150))
    assert usercom.calls() == {"listing": 0, "mass_update": 0, "update_or_create": 0, "attributes": 0,
                               "other": 0}
    ids = _buyers(client, "u1", "u2")  # one attribute creation, two update_or_create
    _pages(client, page_size=100)
    usercom.fail_next(1, Fault(503))
    assert client.get(LISTING).status_code == 503  # a faulted call counts too
    client.put(MASS, json={"ids": ids, "attribute": "buyers", "value": True})
    client.get("attributes/")
    client.get("nothing/")
    assert usercom.calls() == {"listing": 3, "mass_update": 1, "update_or_create": 2, "attributes": 2,
                               "other": 1}


def test_seeded_users_existed_before_any_call(usercom: UserComStandIn, client: httpx.Client) -> None:
    ids = usercom.seed_users((f"m{i}" for i in range(20_000)), emails=False)
    assert len(set(ids)) == 20_000 and ids == sorted(ids)
    assert usercom.accepted() == [] and usercom.requests == 0
    assert usercom.users()["m7"] == {"id": ids[7], "email": None, "attributes": {}}
    assert _user(client, "m7") == ids[7]  # update_or_create finds them
    assert client.get(LISTING).json()["count"] == 20_000


# -- the attribute changed in User.com's dashboard (issue 17 item 4) -----------------------

def test_a_deleted_attribute_refuses_mass_updates_by_name(usercom: UserComStandIn,
                                                          client: httpx.Client) -> None:
    ids = _buyers(client, "u1")
    client.put(MASS, json={"ids": ids, "attribute": "buyers", "value": True})
    usercom.delete_attribute("Buyers")
    assert usercom.attributes() == [] and usercom.users()["u1"]["attributes"] == {}
    answer = client.put(MASS, json={"ids": ids, "attribute": "buyers", "value": True})
    assert (answer.status_code, answer.json()) == (400, {"attribute": ['Attribute "buyers" does not exist.']})
    recreated = client.post("attributes/", json={"name": "buyers", "value_type": "boolean",
                                                 "content_type": "clientuser"})
    assert recreated.status_code == 201 and recreated.json()["id"] == 2  # ids are not reused
    assert client.put(MASS, json={"ids": ids, "attribute": "buyers", "value": True}).status_code == 200
    with pytest.raises(KeyError):
        usercom.delete_attribute("sellers")


def test_an_attribute_changed_to_string_refuses_booleans_by_name(usercom: UserComStandIn,
                                                                 client: httpx.Client) -> None:
    ids = _buyers(client, "u1", "u2")
    client.put(MASS, json={"ids": ids[:1], "attribute": "buyers", "value": True})
    usercom.set_attribute_type("buyers", "string")
    assert usercom.users()["u1"]["attributes"] == {"buyers": "true"}  # kept, as text
    answer = client.put(MASS, json={"ids": ids, "attribute": "buyers", "value": False})
    assert answer.status_code == 400
    assert answer.json() == {"value": ['Attribute "buyers" is of type string: a valid string is required.']}
    assert usercom.users()["u2"]["attributes"] == {}
    usercom.add_attribute("score", "integer")
    usercom.set_attribute_type("buyers", "integer")  # "true" does not fit: dropped
    assert usercom.users()["u1"]["attributes"] == {}
    assert [a["value_type"] for a in usercom.attributes()] == ["integer", "integer"]


def test_every_field_error_comes_in_one_answer(usercom: UserComStandIn, client: httpx.Client) -> None:
    ids = _buyers(client, "u1")
    answer = client.put(MASS, json={"ids": [*ids, 404], "attribute": "sellers", "value": True})
    assert answer.status_code == 400 and set(answer.json()) == {"ids", "attribute"}
    assert "404" in answer.json()["ids"][0] and "sellers" in answer.json()["attribute"][0]
