"""Requests and checks the gateway tests share."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from tests.gateway.conftest import Gateway, new_id

PICKUP = {"lat": 12.97, "lng": 77.59, "address": "MG Road"}
DROP = {"lat": 13.03, "lng": 77.62, "address": "Hebbal"}


def vehicle_type() -> str:
    """A vehicle type no other test uses, so no other test's vehicles are matched."""
    return f"vt_{uuid.uuid4().hex[:10]}"


def search(kind: str, quantity: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        "pickup": PICKUP,
        "drop": DROP,
        "trucks": [{"vehicleType": kind, "quantity": quantity}],
        **extra,
    }


async def register_vehicle(
    api: httpx.AsyncClient, gateway: Gateway, transporter: str, kind: str
) -> str:
    vehicle_id = new_id("v")
    body = {"vehicleType": kind, "lat": PICKUP["lat"], "lng": PICKUP["lng"]}
    url = f"/v1/transporters/me/vehicles/{vehicle_id}"
    response = await api.put(url, json=body, headers=gateway.auth("transporter", transporter))
    assert response.status_code == 200, response.text
    return vehicle_id


async def create(
    api: httpx.AsyncClient, gateway: Gateway, customer: str, body: dict[str, Any]
) -> dict[str, Any]:
    response = await api.post(
        "/v1/broadcasts", json=body, headers=gateway.auth("customer", customer)
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def valid_search(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "pickup": {"lat": 12.97, "lng": 77.59, "address": "MG Road"},
        "drop": {"lat": 13.03, "lng": 77.62, "address": "Hebbal"},
        "trucks": [{"vehicleType": "open_17ft", "quantity": 2}],
    }
    body.update(changes)
    return body


def error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()["error"]
    assert body["code"] == code
    assert isinstance(body["message"], str) and body["message"]
    return body
