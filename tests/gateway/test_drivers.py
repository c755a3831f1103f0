"""Drivers through the gateway (CONTRACT.md section 6): heartbeats, availability and driver
assignment, with the broadcast, acceptance and presence services behind it."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from redis.asyncio import Redis

from tests.gateway.conftest import Gateway, new_id
from tests.gateway.helpers import create, error, register_vehicle, search, vehicle_type

ISO_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def register_driver(
    api: httpx.AsyncClient, gateway: Gateway, transporter: str, *, online: bool
) -> str:
    driver_id = new_id("d")
    url = f"/v1/transporters/me/drivers/{driver_id}"
    body = {"name": "Ravi", "phone": "+919800000002"}
    response = await api.put(url, json=body, headers=gateway.auth("transporter", transporter))
    assert response.status_code == 200, response.text
    if online:
        switched = await api.put(
            "/v1/drivers/me/availability",
            json={"online": True},
            headers=gateway.auth("driver", driver_id),
        )
        assert switched.status_code == 200, switched.text
    return driver_id


@dataclass
class Won:
    customer: str
    transporter: str
    vehicle_id: str
    broadcast_id: str
    assignment_id: str


async def won_assignment(
    api: httpx.AsyncClient, gateway: Gateway, transporter: str | None = None
) -> Won:
    """A transporter with a new vehicle that won the one slot of a new customer's search."""
    customer, transporter, kind = new_id("c"), transporter or new_id("t"), vehicle_type()
    vehicle_id = await register_vehicle(api, gateway, transporter, kind)
    created = await create(api, gateway, customer, search(kind))
    url = f"/v1/broadcasts/{created['broadcastId']}/accept"
    body = {"vehicleType": kind, "quantity": 1}
    accepted = await api.post(url, json=body, headers=gateway.auth("transporter", transporter))
    assert accepted.status_code == 200, accepted.text
    assignment_id = accepted.json()["assignments"][0]["assignmentId"]
    return Won(customer, transporter, vehicle_id, created["broadcastId"], assignment_id)


async def assign(
    api: httpx.AsyncClient, gateway: Gateway, won: Won, driver_id: str
) -> httpx.Response:
    return await api.post(
        f"/v1/assignments/{won.assignment_id}/driver",
        json={"driverId": driver_id, "vehicleId": won.vehicle_id},
        headers=gateway.auth("transporter", won.transporter),
    )


async def test_heartbeat_is_recorded(
    api: httpx.AsyncClient, system: Gateway, redis_client: Redis
) -> None:
    """POST drivers/me/heartbeat is 204 and notes the driver's sighting for presence."""
    driver_id = new_id("d")
    before_ms = time.time() * 1000
    response = await api.post("/v1/drivers/me/heartbeat", headers=system.auth("driver", driver_id))
    assert response.status_code == 204, response.text
    score = await redis_client.zscore(f"{system.prefix}presence:heartbeats", driver_id)
    assert score is not None and score >= before_ms - 1


async def test_availability_is_reported_and_listed(
    api: httpx.AsyncClient, presence: Gateway
) -> None:
    """PUT drivers/me/availability is 200 {driverId, online, at}; the fleet list shows it."""
    transporter = new_id("t")
    driver_id = await register_driver(api, presence, transporter, online=False)
    response = await api.put(
        "/v1/drivers/me/availability",
        json={"online": True},
        headers=presence.auth("driver", driver_id),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["driverId"] == driver_id and body["online"] is True
    assert ISO_MS.match(body["at"])
    listed = await api.get(
        "/v1/transporters/me/drivers", headers=presence.auth("transporter", transporter)
    )
    assert listed.json()["drivers"][0]["online"] is True


async def test_assign_driver_then_cancel(api: httpx.AsyncClient, presence: Gateway) -> None:
    """A driver is assigned (200 driver_assigned, visible to the driver); a cancel reverts it."""
    won = await won_assignment(api, presence)
    driver_id = await register_driver(api, presence, won.transporter, online=True)
    response = await assign(api, presence, won, driver_id)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["state"] == "driver_assigned"
    assert (body["driverId"], body["vehicleId"]) == (driver_id, won.vehicle_id)
    mine = await api.get("/v1/drivers/me/assignment", headers=presence.auth("driver", driver_id))
    assert mine.status_code == 200 and mine.json()["assignmentId"] == won.assignment_id
    listed = await api.get(
        "/v1/transporters/me/drivers", headers=presence.auth("transporter", won.transporter)
    )
    assert listed.json()["drivers"][0]["activeAssignmentId"] == won.assignment_id
    cancel = await api.post(
        f"/v1/broadcasts/{won.broadcast_id}/cancel", headers=presence.auth("customer", won.customer)
    )
    assert cancel.status_code == 200
    mine = await api.get("/v1/drivers/me/assignment", headers=presence.auth("driver", driver_id))
    assert mine.status_code == 404
    shown = await api.get(
        f"/v1/assignments/{won.assignment_id}", headers=presence.auth("customer", won.customer)
    )
    assert shown.json()["state"] == "cancelled"


async def test_busy_driver_is_409(api: httpx.AsyncClient, presence: Gateway) -> None:
    """A driver already on an active assignment cannot take a second one: 409 driver_busy."""
    first = await won_assignment(api, presence)
    driver_id = await register_driver(api, presence, first.transporter, online=True)
    assert (await assign(api, presence, first, driver_id)).status_code == 200
    second = await won_assignment(api, presence, first.transporter)
    error(await assign(api, presence, second, driver_id), 409, "driver_busy")


async def test_offline_driver_is_409(api: httpx.AsyncClient, presence: Gateway) -> None:
    """A driver who is offline cannot be assigned: 409 driver_offline."""
    won = await won_assignment(api, presence)
    driver_id = await register_driver(api, presence, won.transporter, online=False)
    error(await assign(api, presence, won, driver_id), 409, "driver_offline")


async def test_another_transporters_driver_is_403(
    api: httpx.AsyncClient, presence: Gateway
) -> None:
    """Assigning a driver registered to another transporter is 403."""
    won = await won_assignment(api, presence)
    stranger = await register_driver(api, presence, new_id("t"), online=True)
    error(await assign(api, presence, won, stranger), 403, "forbidden")


async def test_assign_on_cancelled_broadcast_is_409(
    api: httpx.AsyncClient, presence: Gateway
) -> None:
    """Assigning a driver after the broadcast was cancelled is 409 request_cancelled."""
    won = await won_assignment(api, presence)
    driver_id = await register_driver(api, presence, won.transporter, online=True)
    cancel = await api.post(
        f"/v1/broadcasts/{won.broadcast_id}/cancel", headers=presence.auth("customer", won.customer)
    )
    assert cancel.status_code == 200
    error(await assign(api, presence, won, driver_id), 409, "request_cancelled")
