"""A broadcast that times out, through HTTP with a real timer process: the timer ends it
`expired` / `timeout`, and accepts and cancel are then 409 request_expired (sections 4 and 5)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from tests.gateway import races_fixtures
from tests.gateway.conftest import new_id
from tests.gateway.helpers import PICKUP, error, search, vehicle_type
from tests.gateway.races_fixtures import Cluster, client_of, one_gateway

TIMEOUT_S = 1.0
EXPIRED_WITHIN_S = 10.0

# This module's deployment acts on a whole database: it gets its own.
database_url = races_fixtures.database_url


@pytest.fixture(scope="module")
def deployment(
    service_env_module: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """A gateway with broadcast, acceptance and timer processes; broadcasts last one second."""
    tmp = tmp_path_factory.mktemp("expiry")
    with one_gateway(
        service_env_module,
        tmp,
        ("broadcast", "acceptance", "timer"),
        BROADCAST_TIMEOUT_SECONDS=str(TIMEOUT_S),
    ) as running:
        yield running


@pytest.fixture
async def api(deployment: Cluster) -> AsyncIterator[httpx.AsyncClient]:
    async with client_of(deployment, 15.0) as client:
        yield client


async def _expired(api: httpx.AsyncClient, url: str, headers: dict[str, str]) -> dict[str, Any]:
    """The broadcast once it has ended; fails if that takes longer than EXPIRED_WITHIN_S."""
    deadline = time.monotonic() + EXPIRED_WITHIN_S
    while True:
        body: dict[str, Any] = (await api.get(url, headers=headers)).json()
        if body["state"] != "broadcasting" or time.monotonic() > deadline:
            return body
        await asyncio.sleep(0.05)


async def test_after_the_timeout_accepts_and_cancel_are_409_expired(
    api: httpx.AsyncClient, deployment: Cluster
) -> None:
    """Once the timer expired a broadcast, accepting a slot or trucks and cancelling it are 409
    request_expired."""
    customer, transporter, kind = new_id("c"), new_id("t"), vehicle_type()
    vehicle = {"vehicleType": kind, "lat": PICKUP["lat"], "lng": PICKUP["lng"]}
    put = await api.put(
        f"/v1/transporters/me/vehicles/{new_id('v')}",
        json=vehicle,
        headers=deployment.auth("transporter", transporter),
    )
    assert put.status_code == 200, put.text
    created = await api.post(
        "/v1/broadcasts", json=search(kind, 2), headers=deployment.auth("customer", customer)
    )
    assert created.status_code == 201 and created.json()["notifiedTransporters"] == 1
    url = f"/v1/broadcasts/{created.json()['broadcastId']}"
    ended = await _expired(api, url, deployment.auth("customer", customer))
    assert (ended["state"], ended["endReason"]) == ("expired", "timeout")
    slot = ended["truckRequests"][0]["truckRequestId"]
    headers = deployment.auth("transporter", transporter)
    refusals = [
        await api.post(f"/v1/truck-requests/{slot}/accept", headers=headers),
        await api.post(f"{url}/accept", json={"vehicleType": kind, "quantity": 1}, headers=headers),
        await api.post(f"{url}/cancel", headers=deployment.auth("customer", customer)),
    ]
    for response in refusals:
        assert error(response, 409, "request_expired")["message"] == "Request expired"
