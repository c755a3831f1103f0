"""End to end through the gateway with the broadcast and acceptance services behind it:
fleet registry, search, cancel and accept as the contract describes them (sections 3-5)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.gateway.conftest import Gateway, new_id
from tests.gateway.helpers import (
    PICKUP,
    create,
    error,
    register_vehicle,
    search,
    vehicle_type,
)

RACERS = 60


async def test_vehicle_registration_and_removal(api: httpx.AsyncClient, system: Gateway) -> None:
    """PUT a vehicle is 200 with the vehicle; another transporter's id is 409; DELETE is 204 and
    the vehicle is gone: a search at its position for its type (no other vehicle has it) reaches
    no one."""
    owner, kind, vehicle_id = new_id("t"), vehicle_type(), new_id("v")
    url = f"/v1/transporters/me/vehicles/{vehicle_id}"
    body = {"vehicleType": kind, "lat": 12.97, "lng": 77.59}
    response = await api.put(url, json=body, headers=system.auth("transporter", owner))
    assert response.status_code == 200, response.text
    assert response.json() == {
        "vehicleId": vehicle_id,
        "vehicleType": kind,
        "lat": 12.97,
        "lng": 77.59,
    }
    taken = await api.put(url, json=body, headers=system.auth("transporter"))
    error(taken, 409, "vehicle_taken")
    removed = await api.delete(url, headers=system.auth("transporter", owner))
    assert removed.status_code == 204 and removed.content == b""
    after = await create(api, system, new_id("c"), search(kind))
    assert (after["state"], after["endReason"]) == ("expired", "no_transporters"), after
    assert after["notifiedTransporters"] == 0


@pytest.mark.parametrize("who", ["its owner", "another transporter"])
async def test_a_removed_vehicle_id_can_be_registered_again(
    api: httpx.AsyncClient, system: Gateway, who: str
) -> None:
    """After DELETE the id belongs to no one: its owner or another transporter may PUT it again
    (200, and a search finds it), never vehicle_taken or a 5xx."""
    owner, kind, vehicle_id = new_id("t"), vehicle_type(), new_id("v")
    url = f"/v1/transporters/me/vehicles/{vehicle_id}"
    body = {"vehicleType": kind, "lat": PICKUP["lat"], "lng": PICKUP["lng"]}
    put = await api.put(url, json=body, headers=system.auth("transporter", owner))
    assert put.status_code == 200, put.text
    removed = await api.delete(url, headers=system.auth("transporter", owner))
    assert removed.status_code == 204, removed.text
    again_by = owner if who == "its owner" else new_id("t")
    again = await api.put(url, json=body, headers=system.auth("transporter", again_by))
    assert again.status_code == 200, again.text
    found = await create(api, system, new_id("c"), search(kind))
    assert (found["state"], found["notifiedTransporters"]) == ("broadcasting", 1), found


async def test_driver_registration(api: httpx.AsyncClient, system: Gateway) -> None:
    """PUT a driver is 200 with the driver and lists it; another transporter's id is 409."""
    owner, driver_id = new_id("t"), new_id("d")
    url = f"/v1/transporters/me/drivers/{driver_id}"
    body = {"name": "Ravi Kumar", "phone": "+919800000001"}
    response = await api.put(url, json=body, headers=system.auth("transporter", owner))
    assert response.status_code == 200, response.text
    assert response.json() == {
        "driverId": driver_id,
        "name": "Ravi Kumar",
        "phone": "+919800000001",
        "online": False,
        "lastSeenAt": None,
    }
    error(await api.put(url, json=body, headers=system.auth("transporter")), 409, "driver_taken")
    listed = await api.get("/v1/transporters/me/drivers", headers=system.auth("transporter", owner))
    assert [d["driverId"] for d in listed.json()["drivers"]] == [driver_id]


async def test_search_read_and_cancel(api: httpx.AsyncClient, system: Gateway) -> None:
    """A search is 201 broadcasting to the nearby transporter; cancel is 200, and again the same."""
    customer, transporter, kind = new_id("c"), new_id("t"), vehicle_type()
    await register_vehicle(api, system, transporter, kind)
    created = await create(api, system, customer, search(kind, 2, note="fragile"))
    assert created["state"] == "broadcasting" and created["notifiedTransporters"] == 1
    assert [r["state"] for r in created["truckRequests"]] == ["open", "open"]
    assert created["note"] == "fragile" and created["pickup"] == PICKUP
    url = f"/v1/broadcasts/{created['broadcastId']}"
    assert (await api.get(url, headers=system.auth("customer", customer))).json() == created
    seen = await api.get(url, headers=system.auth("transporter", transporter))
    assert seen.status_code == 200
    listed = await api.get(
        "/v1/transporters/me/broadcasts", headers=system.auth("transporter", transporter)
    )
    assert listed.json()["broadcasts"][0]["openByType"] == {kind: 2}
    cancelled = await api.post(
        f"{url}/cancel", json={"reason": "plans changed"}, headers=system.auth("customer", customer)
    )
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "cancelled"
    assert cancelled.json()["endReason"] == "cancelled_by_customer"
    again = await api.post(f"{url}/cancel", headers=system.auth("customer", customer))
    assert again.status_code == 200 and again.json() == cancelled.json()
    active = await api.get(
        "/v1/customers/me/broadcasts/active", headers=system.auth("customer", customer)
    )
    assert active.status_code == 404


async def test_one_active_search_per_customer(api: httpx.AsyncClient, system: Gateway) -> None:
    """A second, different search while one is active is 409 active_broadcast_exists."""
    customer, kind = new_id("c"), vehicle_type()
    await register_vehicle(api, system, new_id("t"), kind)
    created = await create(api, system, customer, search(kind))
    other = await api.post(
        "/v1/broadcasts", json=search(kind, 2), headers=system.auth("customer", customer)
    )
    body = error(other, 409, "active_broadcast_exists")
    assert body["message"] == "Request already in progress. Cancel it first."
    assert body["broadcastId"] == created["broadcastId"]


async def test_identical_search_without_key_is_replayed(
    api: httpx.AsyncClient, system: Gateway
) -> None:
    """The same body again while that broadcast is active is 200 with it, marked replayed."""
    customer, kind = new_id("c"), vehicle_type()
    await register_vehicle(api, system, new_id("t"), kind)
    created = await create(api, system, customer, search(kind))
    again = await api.post(
        "/v1/broadcasts", json=search(kind), headers=system.auth("customer", customer)
    )
    assert again.status_code == 200, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["broadcastId"] == created["broadcastId"]


async def test_double_tap_creates_one_broadcast(api: httpx.AsyncClient, system: Gateway) -> None:
    """Two identical searches at once create one broadcast: one 201, one replayed 200."""
    customer, kind = new_id("c"), vehicle_type()
    await register_vehicle(api, system, new_id("t"), kind)
    headers = system.auth("customer", customer)
    taps = [api.post("/v1/broadcasts", json=search(kind), headers=headers) for _ in range(2)]
    responses = await asyncio.gather(*taps)
    assert sorted(r.status_code for r in responses) == [200, 201]
    assert len({r.json()["broadcastId"] for r in responses}) == 1


async def test_keyed_search_retry_is_replayed(api: httpx.AsyncClient, system: Gateway) -> None:
    """A retry with the same Idempotency-Key is 200 with the first body, marked replayed."""
    customer, kind = new_id("c"), vehicle_type()
    await register_vehicle(api, system, new_id("t"), kind)
    headers = {**system.auth("customer", customer), "Idempotency-Key": new_id("k")}
    first = await api.post("/v1/broadcasts", json=search(kind), headers=headers)
    assert first.status_code == 201, first.text
    again = await api.post("/v1/broadcasts", json=search(kind), headers=headers)
    assert again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()


async def test_search_without_transporters_expires_at_once(
    api: httpx.AsyncClient, system: Gateway
) -> None:
    """With no matching vehicle the 201 body is already expired / no_transporters; cancel is 409."""
    customer = new_id("c")
    created = await create(api, system, customer, search(vehicle_type()))
    assert created["state"] == "expired" and created["endReason"] == "no_transporters"
    assert created["notifiedTransporters"] == 0
    url = f"/v1/broadcasts/{created['broadcastId']}/cancel"
    body = error(
        await api.post(url, headers=system.auth("customer", customer)), 409, "request_expired"
    )
    assert body["message"] == "Request expired"


async def test_accepts_fill_the_broadcast(api: httpx.AsyncClient, system: Gateway) -> None:
    """Accepting one slot, then too many, then the rest: 200, 409 with `available`, 200 filled."""
    customer, t1, t2, kind = new_id("c"), new_id("t"), new_id("t"), vehicle_type()
    for transporter in (t1, t2):
        await register_vehicle(api, system, transporter, kind)
    created = await create(api, system, customer, search(kind, 2))
    slot = created["truckRequests"][0]["truckRequestId"]
    one = await api.post(
        f"/v1/truck-requests/{slot}/accept", headers=system.auth("transporter", t1)
    )
    assert one.status_code == 200, one.text
    assert one.json()["broadcastId"] == created["broadcastId"]
    assert one.json()["broadcastState"] == "partially_filled"
    assert [(a["truckRequestId"], a["vehicleType"]) for a in one.json()["assignments"]] == [
        (slot, kind)
    ]
    url = f"/v1/broadcasts/{created['broadcastId']}/accept"
    too_many = await api.post(
        url, json={"vehicleType": kind, "quantity": 2}, headers=system.auth("transporter", t2)
    )
    body = error(too_many, 409, "no_longer_available")
    assert body["message"] == "No longer available" and body["available"] == 1
    rest = await api.post(
        url, json={"vehicleType": kind, "quantity": 1}, headers=system.auth("transporter", t2)
    )
    assert rest.status_code == 200 and rest.json()["broadcastState"] == "fully_filled"
    assignment = one.json()["assignments"][0]["assignmentId"]
    mine = await api.get("/v1/transporters/me/assignments", headers=system.auth("transporter", t1))
    assert [a["assignmentId"] for a in mine.json()["assignments"]] == [assignment]
    shown = await api.get(
        f"/v1/assignments/{assignment}", headers=system.auth("customer", customer)
    )
    assert shown.status_code == 200 and shown.json()["state"] == "accepted"


async def test_only_notified_transporters_accept(api: httpx.AsyncClient, system: Gateway) -> None:
    """A transporter that was not sent the broadcast gets 403 not_notified."""
    kind = vehicle_type()
    await register_vehicle(api, system, new_id("t"), kind)
    created = await create(api, system, new_id("c"), search(kind))
    url = f"/v1/broadcasts/{created['broadcastId']}/accept"
    response = await api.post(
        url, json={"vehicleType": kind, "quantity": 1}, headers=system.auth("transporter")
    )
    error(response, 403, "not_notified")


async def test_accept_after_cancel_is_409(api: httpx.AsyncClient, system: Gateway) -> None:
    """Accepting a slot of a cancelled broadcast is 409 request_cancelled."""
    customer, transporter, kind = new_id("c"), new_id("t"), vehicle_type()
    await register_vehicle(api, system, transporter, kind)
    created = await create(api, system, customer, search(kind))
    cancel = await api.post(
        f"/v1/broadcasts/{created['broadcastId']}/cancel", headers=system.auth("customer", customer)
    )
    assert cancel.status_code == 200
    slot = created["truckRequests"][0]["truckRequestId"]
    response = await api.post(
        f"/v1/truck-requests/{slot}/accept", headers=system.auth("transporter", transporter)
    )
    body = error(response, 409, "request_cancelled")
    assert body["message"] == "Request cancelled"


@pytest.mark.parametrize("round_", range(3))
async def test_concurrent_accepts_win_a_slot_once(system: Gateway, round_: int) -> None:
    """60 transporters, each on its own connection, accepting the one slot at once: exactly one
    200 holding that slot, the rest 409 no_longer_available with none left. (The two-gateway,
    two-consumer version of this race is tests/gateway/test_races.py.)"""
    kind = vehicle_type()
    transporters = [new_id("t") for _ in range(RACERS)]
    limits = httpx.Limits(max_connections=RACERS, max_keepalive_connections=RACERS)
    async with httpx.AsyncClient(base_url=system.url, timeout=30.0, limits=limits) as api:
        await asyncio.gather(*(register_vehicle(api, system, t, kind) for t in transporters))
        created = await create(api, system, new_id("c"), search(kind))
        assert created["notifiedTransporters"] == RACERS
        slot = created["truckRequests"][0]["truckRequestId"]
        responses = await asyncio.gather(
            *(
                api.post(f"/v1/truck-requests/{slot}/accept", headers=system.auth("transporter", t))
                for t in transporters
            )
        )
    won = [r for r in responses if r.status_code == 200]
    assert len(won) == 1, sorted(r.status_code for r in responses)
    assert [a["truckRequestId"] for a in won[0].json()["assignments"]] == [slot]
    for response in responses:
        if response is not won[0]:
            assert error(response, 409, "no_longer_available")["available"] == 0
