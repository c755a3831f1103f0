"""The broadcast and acceptance services executing commands sent over the bus, as real processes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import msgspec
import psycopg
import pytest
from redis.asyncio import Redis

from libs.events.bus import CommandClient
from libs.events.catalogue import Location
from libs.events.commands import (
    AcceptResult,
    AcceptSlots,
    BroadcastRef,
    CancelBroadcast,
    CreateBroadcast,
    RegisterVehicle,
    Reply,
    TruckOrder,
)
from tests.processes import environment, services

PICKUP = Location(lat=12.97, lng=77.59, address="MG Road")
DROP = Location(lat=13.03, lng=77.62)


@pytest.fixture(scope="module")
def running(service_env_module: dict[str, str]) -> Iterator[None]:
    with services(["broadcast", "acceptance"], environment(service_env_module)):
        yield


@pytest.fixture
async def client(redis_url: str, running: None, module_prefix: str) -> AsyncIterator[CommandClient]:
    redis = Redis.from_url(redis_url)
    c = CommandClient(redis, module_prefix, f"test-{uuid.uuid4().hex[:6]}")
    await c.start()
    yield c
    await c.close()
    await redis.aclose()


def ok(reply: Reply, kind: type[msgspec.Struct]) -> msgspec.Struct:
    assert reply.failure is None, reply.failure
    return msgspec.json.decode(reply.result, type=kind)


async def fleet(client: CommandClient, transporters: int, near: bool = True) -> list[str]:
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


async def test_search_notifies_transporters_within_the_radius_only(
    client: CommandClient, database_url: str
) -> None:
    """A search reaches transporters with a matching vehicle near the pickup, not far ones."""
    near = await fleet(client, 3)
    await fleet(client, 2, near=False)
    ref = ok(await client.send(search(f"c-{uuid.uuid4().hex[:8]}")), BroadcastRef)
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(
            "SELECT transporter_id FROM broadcast_recipients WHERE broadcast_id = %s",
            (ref.broadcast_id,),
        )  # type: ignore[attr-defined]
        notified = {r[0] for r in await cur.fetchall()}
    assert set(near) <= notified
    assert all(t.startswith("t-") for t in notified)


async def test_identical_search_returns_the_active_broadcast_and_another_is_refused(
    client: CommandClient,
) -> None:
    """While a broadcast is active, the same search replays it and a different one is 409."""
    await fleet(client, 1)
    customer = f"c-{uuid.uuid4().hex[:8]}"
    first = ok(await client.send(search(customer)), BroadcastRef)
    again = ok(await client.send(search(customer)), BroadcastRef)
    assert again == BroadcastRef(broadcast_id=first.broadcast_id, replayed=True)  # type: ignore[attr-defined]
    other = await client.send(search(customer, note="other"))
    assert other.failure is not None and other.failure.code == "active_broadcast_exists"
    assert other.failure.details == {"broadcastId": first.broadcast_id}  # type: ignore[attr-defined]


async def test_many_claims_on_one_slot_have_exactly_one_winner(client: CommandClient) -> None:
    """Fifty transporters claim the only slot at once: one wins, the rest are told it is gone."""
    transporters = await fleet(client, 50)
    ref = ok(await client.send(search(f"c-{uuid.uuid4().hex[:8]}")), BroadcastRef)
    bid = ref.broadcast_id  # type: ignore[attr-defined]
    replies = await asyncio.gather(
        *(
            client.send(AcceptSlots(transporter_id=t, broadcast_id=bid, vehicle_type="open_17ft"))
            for t in transporters
        )
    )
    winners = [r for r in replies if r.failure is None]
    assert len(winners) == 1
    assert {r.failure.code for r in replies if r.failure} == {"no_longer_available"}
    result = ok(winners[0], AcceptResult)
    assert result.broadcast_state == "fully_filled"  # type: ignore[attr-defined]


async def test_cancel_wins_over_later_claims(client: CommandClient) -> None:
    """After a cancel commits, claims on that broadcast are refused as cancelled."""
    [t] = await fleet(client, 1)
    customer = f"c-{uuid.uuid4().hex[:8]}"
    bid = ok(await client.send(search(customer, quantity=2)), BroadcastRef).broadcast_id  # type: ignore[attr-defined]
    ok(
        await client.send(
            AcceptSlots(transporter_id=t, broadcast_id=bid, vehicle_type="open_17ft")
        ),
        AcceptResult,
    )
    ok(await client.send(CancelBroadcast(customer_id=customer, broadcast_id=bid)), BroadcastRef)
    late = await client.send(
        AcceptSlots(transporter_id=t, broadcast_id=bid, vehicle_type="open_17ft")
    )
    assert late.failure is not None and late.failure.code == "request_cancelled"
    again = ok(
        await client.send(CancelBroadcast(customer_id=customer, broadcast_id=bid)), BroadcastRef
    )
    assert again.replayed is True  # type: ignore[attr-defined]
