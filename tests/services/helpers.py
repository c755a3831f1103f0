"""Commands the service tests send: a fleet near the pickup, searches, replies decoded."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import TypeVar

import msgspec
from redis.asyncio import Redis

from libs.events.catalogue import Location
from libs.events.client import CommandClient
from libs.events.commands import BroadcastRef, CreateBroadcast, RegisterVehicle, Reply, TruckOrder

T = TypeVar("T", bound=msgspec.Struct)
PICKUP = Location(lat=12.97, lng=77.59, address="MG Road")
DROP = Location(lat=13.03, lng=77.62)


async def command_client(
    redis_url: str, prefix: str, timeout_s: float = 5.0
) -> AsyncIterator[CommandClient]:
    """A started command client; its commands expire unexecuted after `timeout_s`."""
    redis = Redis.from_url(redis_url)
    client = CommandClient(redis, prefix, f"test-{uuid.uuid4().hex[:6]}", timeout_s=timeout_s)
    await client.start()
    yield client
    await client.close()
    await redis.aclose()


def ok(reply: Reply, kind: type[T]) -> T:
    """The reply's result as `kind`; fails the test if the command was refused."""
    assert reply.failure is None, reply.failure
    return msgspec.json.decode(reply.result, type=kind)


async def fleet(client: CommandClient, transporters: int, near: bool = True) -> list[str]:
    """Register one open_17ft vehicle for each of `transporters` new transporters."""
    ids = [f"t-{uuid.uuid4().hex[:8]}" for _ in range(transporters)]
    for t in ids:
        lat = PICKUP.lat + (0.05 if near else 2.0)
        cmd = RegisterVehicle(
            transporter_id=t, vehicle_id=f"v-{t}", vehicle_type="open_17ft", lat=lat, lng=PICKUP.lng
        )
        assert (await client.send(cmd)).failure is None
    return ids


def search(customer: str, quantity: int = 1, note: str = "n") -> CreateBroadcast:
    return CreateBroadcast(
        customer_id=customer,
        pickup=PICKUP,
        drop=DROP,
        trucks=(TruckOrder(vehicle_type="open_17ft", quantity=quantity),),
        note=note,
        request_hash=f"hash-{note}-{quantity}",
    )


async def new_broadcast(client: CommandClient, quantity: int = 1) -> tuple[str, str]:
    """(customer id, broadcast id) of a new broadcast that reached at least one transporter."""
    customer = f"c-{uuid.uuid4().hex[:8]}"
    ref = ok(await client.send(search(customer, quantity)), BroadcastRef)
    return customer, ref.broadcast_id
