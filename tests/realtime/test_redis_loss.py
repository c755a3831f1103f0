"""A connected client either receives every message meant for it or `resync_required` (contract
section 8): when Redis loses the deployment's data under connected sockets, each gets
`resync_required`, and live messages follow (real gateways and services)."""

from __future__ import annotations

import httpx
from redis.asyncio import Redis

from tests.realtime.actions import search, vehicle, vehicle_type
from tests.realtime.conftest import System, new_id

NOTICED_WITHIN_S = 10.0


async def test_sockets_connected_when_redis_loses_its_data_are_told_to_resync(
    api: httpx.AsyncClient, system: System
) -> None:
    """Delete every key of the deployment (as a Redis restart without persistence would): a
    transporter's sockets on both gateways get `resync_required`, then the next search's
    `new_broadcast`."""
    transporter, kind = new_id("t"), vehicle_type()
    await vehicle(api, system, transporter, kind)
    sockets = [await system.connect("transporter", transporter, gateway=g) for g in (0, 1)]
    first = await search(api, system, new_id("c"), kind)
    for socket in sockets:
        await socket.until(lambda frames: _has(frames, "new_broadcast", first["broadcastId"]))
    redis = Redis.from_url(system.env["REDIS_URL"])
    keys = [k async for k in redis.scan_iter(match=f"{system.env['REDIS_KEY_PREFIX']}*")]
    await redis.delete(*keys)
    await redis.aclose()
    for socket in sockets:
        await socket.until(
            lambda frames: any(f["type"] == "resync_required" for f in frames), NOTICED_WITHIN_S
        )
    second = await search(api, system, new_id("c"), kind)
    for socket in sockets:
        await socket.until(lambda frames: _has(frames, "new_broadcast", second["broadcastId"]))
        await socket.close()


def _has(frames: list[dict[str, object]], kind: str, broadcast_id: str) -> bool:
    return any(
        f["type"] == kind and f.get("data", {}).get("broadcastId") == broadcast_id  # type: ignore[union-attr]
        for f in frames
    )
