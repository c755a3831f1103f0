"""Races through real HTTP against real processes (issue 3): two gateways, two broadcast and two
acceptance processes; every race fires all its requests at once and is repeated several rounds.
What the answers claim is checked against the database too."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
import pytest

from tests.gateway import races_fixtures
from tests.gateway.conftest import new_id
from tests.gateway.helpers import PICKUP, error, search, vehicle_type
from tests.gateway.races_fixtures import Cluster, Lanes

# The race cluster's fixtures (its own database, two of every service, a client, a connection).
database_url = races_fixtures.database_url
cluster = races_fixtures.cluster
lanes = races_fixtures.lanes
client = races_fixtures.client
db = races_fixtures.db

Conn = psycopg.AsyncConnection[Any]

ROUNDS = 20
TRANSPORTERS = 100
SLOTS = 5
QUANTITY_RACERS = 30
SEARCHES = 20
CUSTOMERS = 200
CANCEL_RACERS = 20


@dataclass(frozen=True)
class Fleet:
    kind: str
    transporters: list[str]


async def _register(http: httpx.AsyncClient, cluster: Cluster, transporter: str, kind: str) -> None:
    body = {"vehicleType": kind, "lat": PICKUP["lat"], "lng": PICKUP["lng"]}
    url = cluster.url(f"/v1/transporters/me/vehicles/{new_id('v')}")
    response = await http.put(url, json=body, headers=cluster.auth("transporter", transporter))
    assert response.status_code == 200, response.text


async def _fleet(cluster: Cluster, size: int) -> Fleet:
    kind, transporters = vehicle_type(), [new_id("t") for _ in range(size)]
    async with httpx.AsyncClient(timeout=30.0) as http:
        await asyncio.gather(*(_register(http, cluster, t, kind) for t in transporters))
    return Fleet(kind, transporters)


@pytest.fixture(scope="module")
async def fleet(cluster: Cluster) -> Fleet:
    """100 transporters, each with one vehicle of a type only they have, at the pickup."""
    return await _fleet(cluster, TRANSPORTERS)


@pytest.fixture(scope="module")
async def lone(cluster: Cluster) -> Fleet:
    """One transporter with a vehicle of a type of its own, for searches that need a match."""
    return await _fleet(cluster, 1)


async def _search(
    http: httpx.AsyncClient, cluster: Cluster, customer: str, kind: str, quantity: int
) -> dict[str, Any]:
    response = await http.post(
        cluster.url("/v1/broadcasts"),
        json=search(kind, quantity),
        headers=cluster.auth("customer", customer),
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    assert created["state"] == "broadcasting", created
    return created


def _accept_slot(client: httpx.AsyncClient, cluster: Cluster, slot: str, t: str) -> httpx.Request:
    url = cluster.url(f"/v1/truck-requests/{slot}/accept")
    return client.build_request("POST", url, headers=cluster.auth("transporter", t))


def _accept_many(
    client: httpx.AsyncClient, cluster: Cluster, broadcast: str, kind: str, t: str, quantity: int
) -> httpx.Request:
    return client.build_request(
        "POST",
        cluster.url(f"/v1/broadcasts/{broadcast}/accept"),
        json={"vehicleType": kind, "quantity": quantity},
        headers=cluster.auth("transporter", t),
    )


async def _rows(db: Conn, query: str, *params: Any) -> list[tuple[Any, ...]]:
    cur = await db.execute(query, params)
    return list(await cur.fetchall())


@pytest.mark.parametrize("round_", range(ROUNDS))
async def test_one_slot_one_winner(
    round_: int, cluster: Cluster, lanes: Lanes, client: httpx.AsyncClient, db: Conn, fleet: Fleet
) -> None:
    """100 transporters accepting one slot at once: one 200, the rest 409 no_longer_available."""
    created = await _search(client, cluster, new_id("c"), fleet.kind, 1)
    slot = created["truckRequests"][0]["truckRequestId"]
    await lanes.warm(cluster, TRANSPORTERS)
    requests = [_accept_slot(client, cluster, slot, t) for t in fleet.transporters]
    responses = await lanes.all_at_once(requests)
    winners = [
        t for t, r in zip(fleet.transporters, responses, strict=True) if r.status_code == 200
    ]
    assert len(winners) == 1, [r.status_code for r in responses]
    won = next(r for r in responses if r.status_code == 200).json()
    assert won["broadcastState"] == "fully_filled"
    assert [a["truckRequestId"] for a in won["assignments"]] == [slot]
    for response in responses:
        if response.status_code != 200:
            assert error(response, 409, "no_longer_available")["available"] == 0
    held = await _rows(
        db,
        "SELECT transporter_id, assignment_id FROM assignments WHERE truck_request_id = %s",
        slot,
    )
    assert held == [(winners[0], won["assignments"][0]["assignmentId"])]


def _check_quantity_answer(response: httpx.Response, asked: int, kind: str) -> list[str]:
    """The slots a 200 won (exactly `asked`, all of `kind`); a 409 names fewer available."""
    if response.status_code != 200:
        assert error(response, 409, "no_longer_available")["available"] < asked
        return []
    assignments = response.json()["assignments"]
    assert len(assignments) == asked
    assert {a["vehicleType"] for a in assignments} == {kind}
    return [a["truckRequestId"] for a in assignments]


@pytest.mark.parametrize("round_", range(ROUNDS))
async def test_quantity_accepts_race_for_five_slots(
    round_: int, cluster: Cluster, lanes: Lanes, client: httpx.AsyncClient, db: Conn, fleet: Fleet
) -> None:
    """Accepts of 1-3 trucks racing for 5 slots: no slot won twice, each 200 holds what it asked,
    and fully_filled exactly when all 5 are won."""
    created = await _search(client, cluster, new_id("c"), fleet.kind, SLOTS)
    broadcast = created["broadcastId"]
    racers = fleet.transporters[:QUANTITY_RACERS]
    asks = [random.Random(f"{round_}-{i}").randint(1, 3) for i in range(len(racers))]
    await lanes.warm(cluster, len(racers))
    requests = [
        _accept_many(client, cluster, broadcast, fleet.kind, t, q)
        for t, q in zip(racers, asks, strict=True)
    ]
    responses = await lanes.all_at_once(requests)
    won = [
        slot
        for r, q in zip(responses, asks, strict=True)
        for slot in _check_quantity_answer(r, q, fleet.kind)
    ]
    assert len(won) == len(set(won)) <= SLOTS
    filled = [r for r in responses if r.status_code == 200]
    filled = [r for r in filled if r.json()["broadcastState"] == "fully_filled"]
    assert len(filled) == (1 if len(won) == SLOTS else 0)
    held = await _rows(
        db, "SELECT truck_request_id FROM assignments WHERE broadcast_id = %s", broadcast
    )
    assert sorted(row[0] for row in held) == sorted(won)
    [(state,)] = await _rows(db, "SELECT state FROM broadcasts WHERE broadcast_id = %s", broadcast)
    assert state == ("fully_filled" if len(won) == SLOTS else "partially_filled")


def _check_identical_searches(responses: list[httpx.Response], keyed_once: bool) -> str:
    """One 201; every other success a replayed 200 of it; with one shared key, the duplicates
    still running may instead be 409 request_in_flight (CONTRACT.md section 2). Its id."""
    created = [r for r in responses if r.status_code == 201]
    assert len(created) == 1, [r.status_code for r in responses]
    broadcast = str(created[0].json()["broadcastId"])
    for response in responses:
        if response.status_code == 409 and keyed_once:
            error(response, 409, "request_in_flight")
        elif response is not created[0]:
            assert response.status_code == 200, response.text
            assert response.headers["idempotent-replayed"] == "true"
            assert response.json()["broadcastId"] == broadcast
            if keyed_once:
                assert response.content == created[0].content
    return broadcast


@pytest.mark.parametrize("keys", ["no key", "one key", "a key each"])
@pytest.mark.parametrize("round_", range(5))
async def test_identical_searches_make_one_broadcast(
    round_: int,
    keys: str,
    cluster: Cluster,
    lanes: Lanes,
    client: httpx.AsyncClient,
    db: Conn,
    lone: Fleet,
) -> None:
    """20 identical searches of one customer at once: one broadcast; every success has its id."""
    customer = new_id("c")
    shared = new_id("k")
    headers = [cluster.auth("customer", customer) for _ in range(SEARCHES)]
    if keys != "no key":
        for header in headers:
            header["Idempotency-Key"] = shared if keys == "one key" else new_id("k")
    await lanes.warm(cluster, SEARCHES)
    requests = [
        client.build_request(
            "POST", cluster.url("/v1/broadcasts"), json=search(lone.kind), headers=h
        )
        for h in headers
    ]
    broadcast = _check_identical_searches(await lanes.all_at_once(requests), keys == "one key")
    stored = await _rows(db, "SELECT broadcast_id FROM broadcasts WHERE customer_id = %s", customer)
    assert stored == [(broadcast,)]


@pytest.mark.parametrize("round_", range(3))
async def test_different_customers_get_their_own_broadcasts(
    round_: int, cluster: Cluster, lanes: Lanes, client: httpx.AsyncClient, db: Conn, lone: Fleet
) -> None:
    """200 different customers searching at once each get a 201 with a broadcast of their own."""
    customers = [new_id("c") for _ in range(CUSTOMERS)]
    await lanes.warm(cluster, CUSTOMERS)
    requests = [
        client.build_request(
            "POST",
            cluster.url("/v1/broadcasts"),
            json=search(lone.kind),
            headers=cluster.auth("customer", c),
        )
        for c in customers
    ]
    responses = await lanes.all_at_once(requests)
    assert [r.status_code for r in responses] == [201] * CUSTOMERS
    answered = {r.json()["customerId"]: r.json()["broadcastId"] for r in responses}
    assert set(answered) == set(customers) and len(set(answered.values())) == CUSTOMERS
    stored = await _rows(
        db,
        "SELECT customer_id, broadcast_id FROM broadcasts WHERE customer_id = ANY(%s)",
        customers,
    )
    assert dict(stored) == answered and len(stored) == CUSTOMERS


def _cancel_race(
    client: httpx.AsyncClient, cluster: Cluster, created: dict[str, Any], racers: list[str]
) -> list[httpx.Request]:
    """Accepts by `racers` (by slot and by quantity, in turn) around the customer's cancel."""
    broadcast, kind = created["broadcastId"], created["truckRequests"][0]["vehicleType"]
    slots = [r["truckRequestId"] for r in created["truckRequests"]]
    return [
        _accept_slot(client, cluster, slots[i % len(slots)], t)
        if i % 2
        else _accept_many(client, cluster, broadcast, kind, t, 1)
        for i, t in enumerate(racers)
    ]


async def _nothing_active(db: Conn, broadcast: str, accepted: set[str]) -> None:
    """Every assignment of the broadcast (those answered 200 among them) is cancelled, and no
    truck request is open or accepted."""
    assignments = await _rows(
        db, "SELECT assignment_id, state FROM assignments WHERE broadcast_id = %s", broadcast
    )
    assert {a for a, _ in assignments} == accepted
    assert {s for _, s in assignments} <= {"cancelled"}
    slots = await _rows(
        db, "SELECT DISTINCT state FROM truck_requests WHERE broadcast_id = %s", broadcast
    )
    assert slots == [("cancelled",)]


@pytest.mark.parametrize("round_", range(ROUNDS))
async def test_cancel_among_accepts_wins(
    round_: int, cluster: Cluster, lanes: Lanes, client: httpx.AsyncClient, db: Conn, fleet: Fleet
) -> None:
    """A cancel fired with accepts: afterwards no assignment is active, a later accept is 409
    request_cancelled, and a second cancel returns the same body."""
    customer = new_id("c")
    created = await _search(client, cluster, customer, fleet.kind, SLOTS)
    broadcast = created["broadcastId"]
    cancel_url = f"/v1/broadcasts/{broadcast}/cancel"
    racers = fleet.transporters[:CANCEL_RACERS]
    requests = _cancel_race(client, cluster, created, racers)
    at = round_ * len(requests) // (ROUNDS - 1)
    cancel = client.build_request(
        "POST", cluster.url(cancel_url), json={}, headers=cluster.auth("customer", customer)
    )
    requests.insert(at, cancel)
    await lanes.warm(cluster, len(requests))
    responses = await lanes.all_at_once(requests)
    cancelled = responses.pop(at)
    assert cancelled.status_code == 200, cancelled.text
    body = cancelled.json()
    assert (body["state"], body["endReason"]) == ("cancelled", "cancelled_by_customer")
    assert {r["state"] for r in body["truckRequests"]} == {"cancelled"}
    accepted = set()
    for response in responses:
        if response.status_code == 200:
            accepted |= {a["assignmentId"] for a in response.json()["assignments"]}
        else:
            assert response.json()["error"]["code"] in {"no_longer_available", "request_cancelled"}
            assert response.status_code == 409
    await _nothing_active(db, broadcast, accepted)
    late = _cancel_race(client, cluster, created, racers[:2])
    for response in await lanes.all_at_once(late):
        assert error(response, 409, "request_cancelled")["message"] == "Request cancelled"
    again = await client.post(
        cluster.url(cancel_url), json={}, headers=cluster.auth("customer", customer)
    )
    assert again.status_code == 200 and again.content == cancelled.content
