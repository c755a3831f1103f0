"""The gap between `expiresAt` and the timer's expiry, through HTTP with no timer running: once
`expiresAt` has passed the broadcast is over by timeout, so cancel and accept agree on 409
request_expired (sections 4 and 5) and nothing cancels it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import httpx
import psycopg
import pytest

from tests.gateway import races_fixtures
from tests.gateway.conftest import new_id
from tests.gateway.helpers import PICKUP, error, search, vehicle_type
from tests.gateway.races_fixtures import Cluster, client_of, one_gateway

TIMEOUT_S = 1.0

# This module's deployment acts on a whole database: it gets its own.
database_url = races_fixtures.database_url


@pytest.fixture(scope="module")
def deployment(
    service_env_module: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """A gateway with broadcast and acceptance processes and no timer; broadcasts last 1 s."""
    tmp = tmp_path_factory.mktemp("expiry-gap")
    with one_gateway(
        service_env_module,
        tmp,
        ("broadcast", "acceptance"),
        BROADCAST_TIMEOUT_SECONDS=str(TIMEOUT_S),
    ) as running:
        yield running


@pytest.fixture
async def api(deployment: Cluster) -> AsyncIterator[httpx.AsyncClient]:
    async with client_of(deployment, 15.0) as client:
        yield client


async def _past(moment: str) -> None:
    """Return once the wall clock is past `moment` (ISO 8601 with a trailing Z)."""
    deadline = datetime.fromisoformat(moment.replace("Z", "+00:00"))
    while datetime.now(UTC) <= deadline:
        await asyncio.sleep(0.05)


async def _stored(database_url: str, broadcast_id: str) -> tuple[str, list[str]]:
    """The broadcast's state in PostgreSQL and the types of the events of its stream."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT state FROM broadcasts WHERE broadcast_id = %s", (broadcast_id,)
        )
        state = await cur.fetchone()
        cur = await conn.execute(
            "SELECT event_type FROM events WHERE stream_id = %s ORDER BY version",
            (f"broadcast-{broadcast_id}",),
        )
        assert state is not None
        return str(state[0]), [str(row[0]) for row in await cur.fetchall()]


async def test_after_expires_at_cancel_and_accept_agree_on_409_expired(
    api: httpx.AsyncClient, deployment: Cluster
) -> None:
    """Past `expiresAt`, before any timer expired it, cancel and both accepts are 409
    request_expired, and the broadcast is not cancelled in PostgreSQL."""
    customer, transporter, kind = new_id("c"), new_id("t"), vehicle_type()
    vehicle = {"vehicleType": kind, "lat": PICKUP["lat"], "lng": PICKUP["lng"]}
    headers = deployment.auth("transporter", transporter)
    put = await api.put(
        f"/v1/transporters/me/vehicles/{new_id('v')}", json=vehicle, headers=headers
    )
    assert put.status_code == 200, put.text
    created = await api.post(
        "/v1/broadcasts", json=search(kind, 2), headers=deployment.auth("customer", customer)
    )
    assert created.status_code == 201 and created.json()["notifiedTransporters"] == 1
    body = created.json()
    url, slot = f"/v1/broadcasts/{body['broadcastId']}", body["truckRequests"][0]["truckRequestId"]
    await _past(body["expiresAt"])
    responses = [
        await api.post(f"{url}/cancel", headers=deployment.auth("customer", customer)),
        await api.post(f"/v1/truck-requests/{slot}/accept", headers=headers),
        await api.post(f"{url}/accept", json={"vehicleType": kind, "quantity": 1}, headers=headers),
    ]
    for response in responses:
        assert error(response, 409, "request_expired")["message"] == "Request expired"
    state, events = await _stored(deployment.database_url, body["broadcastId"])
    assert state != "cancelled" and "broadcast_cancelled" not in events
