"""REDIS_KEY_PREFIX (CONTRACT.md section 1): every Redis key the system creates starts with it."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import connect

from libs.runtime.tokens import Role, issue
from tests.processes import environment, services

SERVICES = ("gateway", "broadcast", "acceptance", "timer", "presence")


@pytest.fixture(scope="module")
def database_url(module_database: str) -> str:
    return module_database


async def all_keys(redis: Redis) -> set[bytes]:
    return {k async for k in redis.scan_iter(count=5000)}


async def test_every_key_a_whole_story_creates_starts_with_the_prefix(
    service_env: dict[str, str], redis_url: str, prefix: str
) -> None:
    """Search, accept, driver online, heartbeat and a socket: no new key lacks the prefix."""
    redis = Redis.from_url(redis_url)
    before = await all_keys(redis)
    env = environment(service_env)
    with services(SERVICES, env) as running:
        base = f"http://127.0.0.1:{running['gateway'].port}"

        def auth(role: Role, sub: str) -> dict[str, str]:
            token = issue(env["JWT_SECRET"], role=role, sub=sub, ttl_s=300)
            return {"Authorization": f"Bearer {token}"}

        t, c, d = (f"{k}-{uuid.uuid4().hex[:8]}" for k in "tcd")
        async with httpx.AsyncClient(base_url=base, timeout=10) as api:
            socket = await connect(
                f"ws://127.0.0.1:{running['gateway'].port}/v1/ws",
                additional_headers=auth("transporter", t),
            )
            vehicle = {"vehicleType": "open_17ft", "lat": 12.97, "lng": 77.59}
            assert (
                await api.put(
                    f"/v1/transporters/me/vehicles/v-{t}",
                    json=vehicle,
                    headers=auth("transporter", t),
                )
            ).status_code == 200
            driver = {"name": "Ravi", "phone": "+911234567890"}
            assert (
                await api.put(
                    f"/v1/transporters/me/drivers/{d}", json=driver, headers=auth("transporter", t)
                )
            ).status_code == 200
            assert (
                await api.put(
                    "/v1/drivers/me/availability", json={"online": True}, headers=auth("driver", d)
                )
            ).status_code == 200
            assert (
                await api.post("/v1/drivers/me/heartbeat", headers=auth("driver", d))
            ).status_code == 204
            search = {
                "pickup": {"lat": 12.97, "lng": 77.59},
                "drop": {"lat": 13.0, "lng": 77.6},
                "trucks": [{"vehicleType": "open_17ft", "quantity": 1}],
            }
            created = await api.post(
                "/v1/broadcasts",
                json=search,
                headers={**auth("customer", c), "Idempotency-Key": "k1"},
            )
            assert created.status_code == 201
            types = [
                json.loads(await asyncio.wait_for(socket.recv(), 10))["type"] for _ in range(2)
            ]
            assert types == ["driver_status_changed", "new_broadcast"]
            bid = created.json()["broadcastId"]
            accepted = await api.post(
                f"/v1/broadcasts/{bid}/accept",
                json={"vehicleType": "open_17ft", "quantity": 1},
                headers=auth("transporter", t),
            )
            assert accepted.status_code == 200
            await socket.close()
        new = await all_keys(redis) - before
    await redis.aclose()
    assert any(k.startswith(prefix.encode()) for k in new)
    assert [k for k in new if not k.startswith(prefix.encode())] == []
