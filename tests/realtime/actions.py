"""What users do over HTTP in the real-time tests: fleets, searches, accepts, drivers."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from tests.realtime.conftest import System, new_id, ok

PICKUP = {"lat": 12.97, "lng": 77.59, "address": "MG Road"}
DROP = {"lat": 13.03, "lng": 77.62, "address": "Hebbal"}


def vehicle_type() -> str:
    """A vehicle type no other test uses, so only this test's transporters are matched."""
    return f"vt_{uuid.uuid4().hex[:10]}"


async def vehicle(api: httpx.AsyncClient, system: System, transporter: str, kind: str) -> str:
    vehicle_id = new_id("v")
    body = {"vehicleType": kind, "lat": PICKUP["lat"], "lng": PICKUP["lng"]}
    url = f"{system.url()}/v1/transporters/me/vehicles/{vehicle_id}"
    ok(await api.put(url, json=body, headers=system.auth("transporter", transporter)))
    return vehicle_id


async def driver(api: httpx.AsyncClient, system: System, transporter: str) -> str:
    driver_id = new_id("d")
    url = f"{system.url()}/v1/transporters/me/drivers/{driver_id}"
    body = {"name": "Ravi Kumar", "phone": "+919800000001"}
    ok(await api.put(url, json=body, headers=system.auth("transporter", transporter)))
    return driver_id


async def availability(
    api: httpx.AsyncClient, system: System, driver_id: str, online: bool, gateway: int | None = None
) -> dict[str, Any]:
    url = f"{system.url(gateway)}/v1/drivers/me/availability"
    body = ok(await api.put(url, json={"online": online}, headers=system.auth("driver", driver_id)))
    assert isinstance(body, dict)
    return body


async def search(
    api: httpx.AsyncClient, system: System, customer: str, kind: str, quantity: int = 1
) -> dict[str, Any]:
    body = {"pickup": PICKUP, "drop": DROP, "trucks": [{"vehicleType": kind, "quantity": quantity}]}
    url = f"{system.url()}/v1/broadcasts"
    created = ok(await api.post(url, json=body, headers=system.auth("customer", customer)), 201)
    assert isinstance(created, dict)
    return created


async def accept(
    api: httpx.AsyncClient, system: System, transporter: str, broadcast_id: str, kind: str
) -> dict[str, Any]:
    url = f"{system.url()}/v1/broadcasts/{broadcast_id}/accept"
    body = {"vehicleType": kind, "quantity": 1}
    result = ok(await api.post(url, json=body, headers=system.auth("transporter", transporter)))
    assert isinstance(result, dict)
    return result


async def accept_slot(
    api: httpx.AsyncClient, system: System, transporter: str, truck_request_id: str
) -> dict[str, Any]:
    url = f"{system.url()}/v1/truck-requests/{truck_request_id}/accept"
    result = ok(await api.post(url, headers=system.auth("transporter", transporter)))
    assert isinstance(result, dict)
    return result


async def assign(
    api: httpx.AsyncClient,
    system: System,
    transporter: str,
    assignment_id: str,
    driver_id: str,
    vehicle_id: str,
) -> dict[str, Any]:
    url = f"{system.url()}/v1/assignments/{assignment_id}/driver"
    body = {"driverId": driver_id, "vehicleId": vehicle_id}
    result = ok(await api.post(url, json=body, headers=system.auth("transporter", transporter)))
    assert isinstance(result, dict)
    return result


async def cancel(
    api: httpx.AsyncClient, system: System, customer: str, broadcast_id: str
) -> dict[str, Any]:
    url = f"{system.url()}/v1/broadcasts/{broadcast_id}/cancel"
    result = ok(await api.post(url, json={}, headers=system.auth("customer", customer)))
    assert isinstance(result, dict)
    return result
