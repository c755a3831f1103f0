"""A 503 is true (contract section 2), through HTTP with real processes.

The gateway answers 503 `unavailable` when a command's reply does not come within its timeout.
Here the claim is held up by a lock on the broadcast's row for longer than that; once the lock is
gone, the claim must not take effect after all, and the keyed retry must decide afresh (and win).
A command that took effect before the gateway gave up is answered with its outcome instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import psycopg
import pytest
from redis.asyncio import Redis

from libs.events.commands import commands_stream
from libs.events.trim import group_lag
from tests.gateway import races_fixtures
from tests.gateway.conftest import new_id
from tests.gateway.helpers import PICKUP, error, search, vehicle_type
from tests.gateway.races_fixtures import Cluster, client_of, one_gateway

COMMAND_TIMEOUT_S = 1.0
SETTLED_WITHIN_S = 15.0

database_url = races_fixtures.database_url


@pytest.fixture(scope="module")
def deployment(
    service_env_module: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """A gateway whose commands time out after one second, with broadcast and acceptance."""
    tmp = tmp_path_factory.mktemp("true-503")
    with one_gateway(
        service_env_module,
        tmp,
        ("broadcast", "acceptance"),
        COMMAND_TIMEOUT_SECONDS=str(COMMAND_TIMEOUT_S),
    ) as running:
        yield running


@pytest.fixture
async def api(deployment: Cluster) -> AsyncIterator[httpx.AsyncClient]:
    async with client_of(deployment, 30.0) as client:
        yield client


@pytest.fixture
async def db(deployment: Cluster) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    async with await psycopg.AsyncConnection.connect(
        deployment.database_url, autocommit=True
    ) as conn:
        yield conn


async def _broadcast(api: httpx.AsyncClient, deployment: Cluster) -> tuple[str, str, str]:
    """A one-slot broadcast sent to one transporter: (broadcast id, slot id, transporter)."""
    customer, transporter, kind = new_id("c"), new_id("t"), vehicle_type()
    vehicle = {"vehicleType": kind, "lat": PICKUP["lat"], "lng": PICKUP["lng"]}
    put = await api.put(
        f"/v1/transporters/me/vehicles/{new_id('v')}",
        json=vehicle,
        headers=deployment.auth("transporter", transporter),
    )
    assert put.status_code == 200, put.text
    created = await api.post(
        "/v1/broadcasts", json=search(kind), headers=deployment.auth("customer", customer)
    )
    assert created.status_code == 201, created.text
    body = created.json()
    return body["broadcastId"], body["truckRequests"][0]["truckRequestId"], transporter


@contextlib.asynccontextmanager
async def _row_locked(url: str, broadcast_id: str) -> AsyncIterator[None]:
    """Hold the broadcast's row lock (as a stalled writer would) until the block ends."""
    async with await psycopg.AsyncConnection.connect(url) as conn:
        await conn.execute(
            "SELECT 1 FROM broadcasts WHERE broadcast_id = %s FOR UPDATE", (broadcast_id,)
        )
        yield
        await conn.rollback()


async def _all_commands_handled(deployment: Cluster, service: str) -> None:
    """Wait until the service's group has nothing waiting and nothing pending."""
    env = deployment.gateways[0].env
    redis = Redis.from_url(env["REDIS_URL"])
    stream = commands_stream(env["REDIS_KEY_PREFIX"], service)
    deadline = time.monotonic() + SETTLED_WITHIN_S
    try:
        while time.monotonic() < deadline:
            groups: Any = await redis.xinfo_groups(stream)
            lags = [await group_lag(redis, stream, g) for g in groups]
            if groups and all(g["pending"] == 0 for g in groups) and lags == [0] * len(lags):
                return
            await asyncio.sleep(0.05)
    finally:
        await redis.aclose()
    raise AssertionError(f"{service} still holds commands after {SETTLED_WITHIN_S} s")


async def _assignments(db: psycopg.AsyncConnection[Any], broadcast_id: str) -> int:
    cur = await db.execute(
        "SELECT count(*) FROM assignments WHERE broadcast_id = %s", (broadcast_id,)
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def test_a_claim_answered_503_never_takes_effect_and_its_keyed_retry_wins(
    api: httpx.AsyncClient, deployment: Cluster, db: psycopg.AsyncConnection[Any]
) -> None:
    """A claim stalled past the gateway's timeout is answered 503 and, once the stall ends, is
    not made after all; the retry with the same Idempotency-Key then claims the slot (200)."""
    broadcast_id, slot, transporter = await _broadcast(api, deployment)
    headers = {**deployment.auth("transporter", transporter), "Idempotency-Key": new_id("k")}
    url = f"/v1/truck-requests/{slot}/accept"
    async with _row_locked(deployment.database_url, broadcast_id):
        first = await api.post(url, headers=headers)
        error(first, 503, "unavailable")
    await _all_commands_handled(deployment, "acceptance")
    assert await _assignments(db, broadcast_id) == 0, "a 503'd claim took effect after all"
    retry = await api.post(url, headers=headers)
    assert retry.status_code == 200, retry.text
    assert [a["truckRequestId"] for a in retry.json()["assignments"]] == [slot]
    assert await _assignments(db, broadcast_id) == 1


async def test_a_quantity_claim_answered_503_never_takes_effect(
    api: httpx.AsyncClient, deployment: Cluster, db: psycopg.AsyncConnection[Any]
) -> None:
    """The same holds for a quantity claim, which the acceptance service may decide in a batch:
    after its 503 no slot is held, and the keyed retry wins it."""
    broadcast_id, _slot, transporter = await _broadcast(api, deployment)
    cur = await db.execute(
        "SELECT vehicle_type FROM truck_requests WHERE broadcast_id = %s", (broadcast_id,)
    )
    kind = (await cur.fetchone() or ("",))[0]
    headers = {**deployment.auth("transporter", transporter), "Idempotency-Key": new_id("k")}
    url, body = f"/v1/broadcasts/{broadcast_id}/accept", {"vehicleType": kind, "quantity": 1}
    async with _row_locked(deployment.database_url, broadcast_id):
        error(await api.post(url, json=body, headers=headers), 503, "unavailable")
    await _all_commands_handled(deployment, "acceptance")
    assert await _assignments(db, broadcast_id) == 0, "a 503'd claim took effect after all"
    retry = await api.post(url, json=body, headers=headers)
    assert retry.status_code == 200, retry.text
    assert await _assignments(db, broadcast_id) == 1
