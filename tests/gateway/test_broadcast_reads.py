"""Broadcast reads (CONTRACT.md section 4) served from read-model rows seeded in PostgreSQL."""

from __future__ import annotations

import re
from typing import Any

import httpx
import psycopg

from libs.runtime.tokens import Role
from tests.gateway.conftest import Gateway, new_id
from tests.gateway.seed import DROP, PICKUP, Seeder, Slot

Conn = psycopg.AsyncConnection[Any]

ISO_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
BROADCAST_FIELDS = [
    "broadcastId",
    "customerId",
    "state",
    "endReason",
    "createdAt",
    "expiresAt",
    "stateChangedAt",
    "pickup",
    "drop",
    "note",
    "notifiedTransporters",
    "truckRequests",
    "history",
]


async def two_transporter_broadcast(seed: Seeder) -> tuple[str, str, str, str, list[Slot]]:
    """A broadcast of customer C notified to T1 and T2, one slot won by each, one open."""
    customer, t1, t2 = new_id("c"), new_id("t"), new_id("t")
    slots = [
        Slot(transporter_id=t1, assignment_id=new_id("a"), state="accepted"),
        Slot(transporter_id=t2, assignment_id=new_id("a"), state="accepted"),
        Slot(vehicle_type="container_20ft"),
    ]
    broadcast_id = await seed.broadcast(
        customer, slots, recipients=[t1, t2], state="partially_filled"
    )
    return broadcast_id, customer, t1, t2, slots


async def test_customer_sees_the_whole_broadcast(
    api: httpx.AsyncClient, system: Gateway, seed: Seeder
) -> None:
    """The owning customer gets every field of the contract's Broadcast, times in ISO ms Z."""
    broadcast_id, customer, t1, t2, slots = await two_transporter_broadcast(seed)
    response = await api.get(
        f"/v1/broadcasts/{broadcast_id}", headers=system.auth("customer", customer)
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert list(body) == BROADCAST_FIELDS
    assert body["broadcastId"] == broadcast_id and body["customerId"] == customer
    assert body["state"] == "partially_filled" and body["endReason"] is None
    assert body["createdAt"] == "2026-11-24T10:00:00.123Z"
    assert all(ISO_MS.match(body[k]) for k in ("createdAt", "expiresAt", "stateChangedAt"))
    assert body["pickup"] == PICKUP and body["drop"] == DROP
    assert body["note"] is None and body["notifiedTransporters"] == 2
    assert body["truckRequests"][0] == {
        "truckRequestId": slots[0].truck_request_id,
        "vehicleType": "open_17ft",
        "state": "accepted",
        "transporterId": t1,
        "assignmentId": slots[0].assignment_id,
    }
    assert [r["transporterId"] for r in body["truckRequests"]] == [t1, t2, None]
    assert [h["state"] for h in body["history"]] == ["created", "broadcasting"]


async def test_transporter_sees_no_other_transporters_ids(
    api: httpx.AsyncClient, system: Gateway, seed: Seeder
) -> None:
    """A notified transporter sees the broadcast with only its own ids on the truck requests."""
    broadcast_id, _customer, t1, t2, slots = await two_transporter_broadcast(seed)
    response = await api.get(
        f"/v1/broadcasts/{broadcast_id}", headers=system.auth("transporter", t1)
    )
    assert response.status_code == 200
    assert t2 not in response.text
    assert str(slots[1].assignment_id) not in response.text
    requests = response.json()["truckRequests"]
    assert [r["transporterId"] for r in requests] == [t1, None, None]
    assert requests[0]["assignmentId"] == slots[0].assignment_id


async def test_strangers_get_404(api: httpx.AsyncClient, system: Gateway, seed: Seeder) -> None:
    """Another customer, or a transporter that was not notified, gets 404 for the broadcast."""
    broadcast_id, *_ = await two_transporter_broadcast(seed)
    url = f"/v1/broadcasts/{broadcast_id}"
    roles: tuple[Role, ...] = ("customer", "transporter")
    for role in roles:
        response = await api.get(url, headers=system.auth(role))
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"


async def test_active_broadcast_of_the_customer(
    api: httpx.AsyncClient, system: Gateway, seed: Seeder
) -> None:
    """GET customers/me/broadcasts/active is the active one; ended ones do not count."""
    customer = new_id("c")
    headers = system.auth("customer", customer)
    await seed.broadcast(customer, [Slot()], state="expired", end_reason="timeout")
    assert (await api.get("/v1/customers/me/broadcasts/active", headers=headers)).status_code == 404
    active = await seed.broadcast(customer, [Slot()])
    response = await api.get("/v1/customers/me/broadcasts/active", headers=headers)
    assert response.status_code == 200
    assert response.json()["broadcastId"] == active


async def test_transporter_list_has_active_notified_broadcasts_with_open_counts(
    api: httpx.AsyncClient, system: Gateway, seed: Seeder
) -> None:
    """GET transporters/me/broadcasts lists active notified broadcasts with openByType."""
    transporter, rival = new_id("t"), new_id("t")
    slots = [
        Slot(),
        Slot(),
        Slot(state="accepted", transporter_id=rival, assignment_id=new_id("a")),
        Slot(
            vehicle_type="container_20ft",
            state="accepted",
            transporter_id=rival,
            assignment_id=new_id("a"),
        ),
    ]
    listed = await seed.broadcast(new_id("c"), slots, recipients=[transporter, rival])
    await seed.broadcast(new_id("c"), [Slot()], recipients=[rival])
    await seed.broadcast(
        new_id("c"),
        [Slot()],
        recipients=[transporter],
        state="cancelled",
        end_reason="cancelled_by_customer",
    )
    response = await api.get(
        "/v1/transporters/me/broadcasts", headers=system.auth("transporter", transporter)
    )
    assert response.status_code == 200
    broadcasts = response.json()["broadcasts"]
    assert [b["broadcastId"] for b in broadcasts] == [listed]
    assert broadcasts[0]["openByType"] == {"open_17ft": 2, "container_20ft": 0}
    assert rival not in response.text


async def test_cancel_of_someone_elses_broadcast_is_404(
    api: httpx.AsyncClient, system: Gateway, seed: Seeder
) -> None:
    """A customer cannot cancel (or learn of) another customer's broadcast: 404."""
    broadcast_id, *_ = await two_transporter_broadcast(seed)
    response = await api.post(
        f"/v1/broadcasts/{broadcast_id}/cancel", headers=system.auth("customer")
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


async def test_accept_of_unknown_truck_request_is_404(
    api: httpx.AsyncClient, system: Gateway
) -> None:
    """Accepting a truck request that does not exist is 404."""
    response = await api.post(
        "/v1/truck-requests/no-such-request/accept", headers=system.auth("transporter")
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
