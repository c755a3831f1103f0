"""Real answers against the API document: a flow through every operation, and the common
refusals, each response checked by `Conformance` (its status declared for the operation, its
body valid for that status's schema with no undeclared field, an error's `code` one of those
the document lists). A handler that answers another status, body or code than the document
says fails here."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from libs.runtime.tokens import issue
from services.gateway.openapi import document
from tests.gateway.conftest import Gateway, new_id
from tests.gateway.helpers import search, vehicle_type
from tests.gateway.openapi_check import Conformance

PICKUP = {"lat": 12.97, "lng": 77.59}


@pytest.fixture
def conformance() -> Conformance:
    return Conformance(document())


@pytest.fixture
async def checked(presence: Gateway, conformance: Conformance) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the shared gateway whose every response is checked against the document."""

    async def check(response: httpx.Response) -> None:
        await response.aread()
        conformance.check(response)

    hooks: dict[str, Any] = {"response": [check]}
    async with httpx.AsyncClient(base_url=presence.url, timeout=15.0, event_hooks=hooks) as client:
        yield client


def expect(response: httpx.Response, status: int) -> Any:
    assert response.status_code == status, response.text
    return response.json() if response.content else None


async def test_every_operation_answers_as_the_document_says(
    checked: httpx.AsyncClient, presence: Gateway, conformance: Conformance
) -> None:
    """One flow (fleet, search, accept both ways, driver, assignment, cancel, refresh, health)
    gets a success from every operation of the document but the WebSocket, each answer valid."""
    api, gw = checked, presence
    customer, transporter, driver, kind = new_id("c"), new_id("t"), new_id("d"), vehicle_type()
    t, c, d = (
        gw.auth("transporter", transporter),
        gw.auth("customer", customer),
        gw.auth("driver", driver),
    )
    vehicle = new_id("v")
    vehicle_url = f"/v1/transporters/me/vehicles/{vehicle}"
    expect(await api.put(vehicle_url, json={"vehicleType": kind, **PICKUP}, headers=t), 200)
    driver_body = {"name": "Ravi", "phone": "+919800000002"}
    expect(await api.put(f"/v1/transporters/me/drivers/{driver}", json=driver_body, headers=t), 200)
    expect(await api.get("/v1/transporters/me/drivers", headers=t), 200)

    key = {"Idempotency-Key": new_id("k")}
    body = search(kind, quantity=2)
    created = expect(await api.post("/v1/broadcasts", json=body, headers={**c, **key}), 201)
    expect(await api.post("/v1/broadcasts", json=body, headers={**c, **key}), 200)
    broadcast = created["broadcastId"]
    expect(await api.get(f"/v1/broadcasts/{broadcast}", headers=c), 200)
    expect(await api.get(f"/v1/broadcasts/{broadcast}", headers=t), 200)
    expect(await api.get("/v1/customers/me/broadcasts/active", headers=c), 200)
    expect(await api.get("/v1/transporters/me/broadcasts", headers=t), 200)

    accept = {"vehicleType": kind, "quantity": 1}
    won = expect(await api.post(f"/v1/broadcasts/{broadcast}/accept", json=accept, headers=t), 200)
    slot = next(r for r in created["truckRequests"] if r["truckRequestId"] not in
                {a["truckRequestId"] for a in won["assignments"]})["truckRequestId"]  # fmt: skip
    expect(await api.post(f"/v1/truck-requests/{slot}/accept", headers=t), 200)
    assignment = won["assignments"][0]["assignmentId"]

    expect(await api.put("/v1/drivers/me/availability", json={"online": True}, headers=d), 200)
    expect(await api.post("/v1/drivers/me/heartbeat", headers=d), 204)
    pick = {"driverId": driver, "vehicleId": vehicle}
    expect(await api.post(f"/v1/assignments/{assignment}/driver", json=pick, headers=t), 200)
    expect(await api.get(f"/v1/assignments/{assignment}", headers=d), 200)
    expect(await api.get("/v1/drivers/me/assignment", headers=d), 200)
    expect(await api.get("/v1/transporters/me/assignments", headers=t), 200)

    expect(await api.post(f"/v1/broadcasts/{broadcast}/cancel", headers=c), 200)
    expect(await api.post(f"/v1/broadcasts/{broadcast}/cancel", json={}, headers=c), 200)
    expect(await api.delete(vehicle_url, headers=t), 204)
    refresh = issue(gw.refresh_secret, role="driver", sub=driver, ttl_s=600)
    expect(await api.post("/v1/auth/refresh", json={"refreshToken": refresh}), 200)
    for path in ("/health", "/livez", "/metrics", "/openapi.json", "/docs", "/asyncapi.json"):
        assert (await api.get(path)).status_code == 200, path
    assert (await api.get("/docs/assets/swagger-ui.css")).status_code == 200

    every = {
        (method.upper(), path)
        for path, item in conformance.document["paths"].items()
        for method in item
    }
    assert every - conformance.succeeded == {("GET", "/v1/ws")}


async def test_refusals_answer_as_the_document_says(
    checked: httpx.AsyncClient, presence: Gateway, conformance: Conformance
) -> None:
    """401, 403, 404, 409 (`active_broadcast_exists`, `vehicle_taken`, `no_longer_available`,
    `driver_offline`), 413, 422 (body, Idempotency-Key reuse) answer with a status and `code`
    the operation declares, and the body's schema."""
    api, gw = checked, presence
    customer, transporter, kind = new_id("c"), new_id("t"), vehicle_type()
    c, t = gw.auth("customer", customer), gw.auth("transporter", transporter)
    expect(await api.get("/v1/transporters/me/drivers"), 401)
    expect(await api.get("/v1/transporters/me/drivers", headers=c), 403)
    expect(await api.get("/v1/broadcasts/no.such.id", headers=c), 404)
    expect(await api.get("/v1/customers/me/broadcasts/active", headers=c), 404)
    vehicle = f"/v1/transporters/me/vehicles/{new_id('v')}"
    expect(await api.put(vehicle, json={"vehicleType": kind, **PICKUP}, headers=t), 200)
    other = gw.auth("transporter", new_id("t"))
    expect(await api.put(vehicle, json={"vehicleType": kind, **PICKUP}, headers=other), 409)
    expect(await api.put(vehicle, json={"vehicleType": "Bad Type", **PICKUP}, headers=t), 422)
    key = {"Idempotency-Key": new_id("k")}
    created = expect(await api.post("/v1/broadcasts", json=search(kind), headers={**c, **key}), 201)
    reused = search(kind, note="another body")
    assert expect(await api.post("/v1/broadcasts", json=reused, headers={**c, **key}), 422)
    assert expect(await api.post("/v1/broadcasts", json=reused, headers=c), 409)
    too_many = {"vehicleType": kind, "quantity": 5}
    url = f"/v1/broadcasts/{created['broadcastId']}/accept"
    expect(await api.post(url, json=too_many, headers=t), 409)
    won = expect(await api.post(url, json={"vehicleType": kind, "quantity": 1}, headers=t), 200)
    driver = new_id("d")
    driver_body = {"name": "Ravi", "phone": "+919800000002"}
    expect(await api.put(f"/v1/transporters/me/drivers/{driver}", json=driver_body, headers=t), 200)
    pick = {"driverId": driver, "vehicleId": vehicle.rsplit("/", 1)[1]}
    assigned = f"/v1/assignments/{won['assignments'][0]['assignmentId']}/driver"
    expect(await api.post(assigned, json=pick, headers=t), 409)  # the driver is offline
    huge = {"refreshToken": "x" * 70_000}
    expect(await api.post("/v1/auth/refresh", json=huge), 413)
    assert conformance.checked == 15  # every answer above was checked


async def test_unrouted_paths_and_methods_answer_the_error_table(
    presence: Gateway, conformance: Conformance
) -> None:
    """A path the document does not have is 404 `not_found`, a method its path does not have
    405 `method_not_allowed`: both listed in `x-error-codes` with that status."""
    async with httpx.AsyncClient(base_url=presence.url, timeout=15.0) as api:
        missing = await api.get("/v1/broadcasts/", headers=presence.auth("customer"))
        assert missing.status_code == 404
        conformance.check_unrouted(missing)
        wrong = await api.patch("/v1/broadcasts", headers=presence.auth("customer"))
        assert wrong.status_code == 405
        conformance.check_unrouted(wrong)
