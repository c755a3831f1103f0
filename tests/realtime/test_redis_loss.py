"""A connected client either receives every message meant for it or `resync_required` (contract
section 8): when Redis loses the deployment's data under connected sockets, each gets
`resync_required`, and live messages follow, without the messages it already had again (real
gateways and services)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from tests.realtime.actions import accept, cancel, search, vehicle, vehicle_type
from tests.realtime.conftest import System, new_id
from tests.realtime.sockets import Socket, brief

NOTICED_WITHIN_S = 10.0


@pytest.fixture(scope="module")
def settings() -> dict[str, str]:
    """Broadcasts outlive a test's Redis loss and its repair."""
    return {"BROADCAST_TIMEOUT_SECONDS": "120", "PRESENCE_TTL_SECONDS": "30"}


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
    await lose_everything(system)
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


async def test_messages_delivered_before_redis_lost_its_data_do_not_come_again(
    api: httpx.AsyncClient, system: System
) -> None:
    """A search and an accept reach the customer's and the transporter's sockets; every key of
    the deployment is deleted, and the relay republishes those events: after `resync_required`,
    the cancel's messages arrive and none of the earlier ones comes a second time."""
    transporter, kind, customer = new_id("t"), vehicle_type(), new_id("c")
    await vehicle(api, system, transporter, kind)
    carrier = await system.connect("transporter", transporter, gateway=0)
    shipper = await system.connect("customer", customer, gateway=1)
    bid = (await search(api, system, customer, kind, quantity=2))["broadcastId"]
    await accept(api, system, transporter, bid, kind)
    await carrier.until(lambda frames: _has(frames, "broadcast_updated", bid))
    await shipper.until(lambda frames: _state(frames, "partially_filled"))
    seen = {socket: len(socket.frames) for socket in (carrier, shipper)}
    await lose_everything(system)
    for socket in (carrier, shipper):
        await socket.until(
            lambda frames: any(f["type"] == "resync_required" for f in frames), NOTICED_WITHIN_S
        )
    await cancel(api, system, customer, bid)
    await carrier.until(lambda frames: _has(frames, "assignment_cancelled", bid))
    await shipper.until(lambda frames: _state(frames, "cancelled"))
    assert [t for t, _ in after(carrier, seen[carrier])] == [
        "broadcast_removed",
        "assignment_cancelled",
    ]
    assert [d.get("state") for _, d in after(shipper, seen[shipper])] == ["cancelled"]
    for socket in (carrier, shipper):
        await socket.close()


async def lose_everything(system: System) -> None:
    """Delete every key of the deployment, as a Redis restart without persistence would."""
    redis = Redis.from_url(system.env["REDIS_URL"])
    keys = [k async for k in redis.scan_iter(match=f"{system.env['REDIS_KEY_PREFIX']}*")]
    await redis.delete(*keys)
    await redis.aclose()


def after(socket: Socket, seen: int) -> list[tuple[str, dict[str, Any]]]:
    """The socket's messages after its first `seen` frames, without `resync_required`."""
    return [m for m in brief(socket.frames[seen:]) if m[0] != "resync_required"]


def _state(frames: list[dict[str, Any]], state: str) -> bool:
    return any(
        f["type"] == "broadcast_state_changed" and f["data"]["state"] == state for f in frames
    )
