"""The projector is a fenced lease (contract section 8): when the fan-out holding it freezes, the
other fan-out projects within 10 s, and the frozen one, woken up, writes nothing to an inbox
(real gateways and services, real PostgreSQL and Redis)."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from libs.events.lease import LeaseLost
from libs.inbox.inbox import Inbox, Message
from libs.readmodel.frames import BroadcastRemoved, Frame
from tests.realtime.actions import DROP, PICKUP, vehicle, vehicle_type
from tests.realtime.conftest import System, new_id, ok
from tests.realtime.sockets import Socket

MOVES_WITHIN_S = 10.0


async def test_a_delivery_with_an_older_token_writes_nothing(redis: Redis, prefix: str) -> None:
    """Once a newer projector fenced the inboxes (every shard), a delivery with the old token
    raises LeaseLost and writes neither the inbox entry nor the delivery mark, in whichever
    shard the user is; the new token delivers; the old one cannot fence them back."""
    inbox = Inbox(redis, prefix)
    removed = BroadcastRemoved(broadcast_id="b", reason="cancelled")
    users = [f"t-{i}" for i in range(40)]
    assert len({inbox.shard(u) for u in users}) > 1
    messages = [
        Message(u, Frame("broadcast_removed", "2026-12-01T00:00:00.000Z", removed)) for u in users
    ]
    await inbox.fence(2)
    for message in messages:
        with pytest.raises(LeaseLost):
            await inbox.deliver("event-1", [message], token=1)
    for user in users:
        assert await redis.xlen(inbox.stream(user)) == 0
        assert not await redis.exists(inbox.mark("event-1", "", 0, inbox.shard(user)))
    with pytest.raises(LeaseLost):
        await inbox.fence(1)
    assert await inbox.deliver("event-1", messages, token=2) == len(users)
    assert await inbox.deliver("event-1", messages, token=2) == 0  # marked: once


async def _new_broadcast(
    api: httpx.AsyncClient, url: str, system: System, kind: str
) -> dict[str, Any]:
    body = {"pickup": PICKUP, "drop": DROP, "trucks": [{"vehicleType": kind, "quantity": 1}]}
    auth = system.auth("customer", new_id("c"))
    created = ok(await api.post(f"{url}/v1/broadcasts", json=body, headers=auth), 201)
    assert isinstance(created, dict)
    return created


def _about(socket: Socket, broadcast_id: str) -> list[str]:
    return [
        f["type"] for f in socket.frames if f.get("data", {}).get("broadcastId") == broadcast_id
    ]


async def test_a_frozen_projector_is_replaced_within_10_s_and_writes_nothing_once_awake(
    api: httpx.AsyncClient, system: System
) -> None:
    """SIGSTOP the fan-out that projects: a search's new_broadcast reaches a transporter within
    10 s through the other fan-out; after SIGCONT the broadcast's removal arrives once, after
    it."""
    transporter, kind = new_id("t"), vehicle_type()
    await vehicle(api, system, transporter, kind)
    frozen = system.fanouts[await system.projecting()].proc.pid
    url = system.url()
    socket = await system.connect("transporter", transporter)
    os.kill(frozen, signal.SIGSTOP)
    try:
        frozen_at = time.monotonic()
        created = await _new_broadcast(api, url, system, kind)
        bid = created["broadcastId"]
        await socket.until(lambda _: "new_broadcast" in _about(socket, bid), MOVES_WITHIN_S + 5)
        assert time.monotonic() - frozen_at <= MOVES_WITHIN_S + 1.0
    finally:
        os.kill(frozen, signal.SIGCONT)
    cancel = f"{url}/v1/broadcasts/{bid}/cancel"
    ok(await api.post(cancel, json={}, headers=system.auth("customer", created["customerId"])))
    await socket.until(lambda _: "broadcast_removed" in _about(socket, bid))
    await socket.quiet(len(socket.frames), seconds=1.0)  # and nothing again after it
    assert _about(socket, bid) == ["new_broadcast", "broadcast_removed"]
    await socket.close()
