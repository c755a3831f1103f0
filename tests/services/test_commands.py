"""The broadcast and acceptance services executing commands sent over the bus, as real processes."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncIterator, Iterator

import psycopg
import pytest

from libs.events.client import CommandClient
from libs.events.commands import (
    AcceptResult,
    AcceptSlots,
    BroadcastRef,
    CancelBroadcast,
    RegisterVehicle,
)
from libs.runtime.settings import load_settings
from tests.processes import environment, services
from tests.services.helpers import PICKUP, command_client, fleet, ok, search

# Not the default (25 km): a radius the services only use if they read BROADCAST_RADIUS_KM.
# The fleets of `fleet()` stand about 5.6 km from the pickup, well inside it.
RADIUS_KM = 10.0
EARTH_KM = 6371.0088  # mean Earth radius
ROUNDS = 5


@pytest.fixture(scope="module")
def running(service_env_module: dict[str, str]) -> Iterator[None]:
    """The broadcast service and two acceptance processes (concurrent claims meet in
    PostgreSQL, not in one consumer's queue), with a 10 km broadcast radius."""
    env = environment(service_env_module, BROADCAST_RADIUS_KM=str(RADIUS_KM))
    with services(["broadcast", "acceptance", "acceptance"], env):
        yield


@pytest.fixture
async def client(redis_url: str, running: None, module_prefix: str) -> AsyncIterator[CommandClient]:
    async for c in command_client(redis_url, module_prefix):
        yield c


def offset(north_km: float, east_km: float) -> tuple[float, float]:
    """(lat, lng) of the point `north_km` north and `east_km` east of the pickup."""
    lat = PICKUP.lat + math.degrees(north_km / EARTH_KM)
    lng = PICKUP.lng + math.degrees(east_km / (EARTH_KM * math.cos(math.radians(PICKUP.lat))))
    return lat, lng


def distance_km(lat: float, lng: float) -> float:
    """Great-circle (haversine) distance from the pickup."""
    p1, p2 = math.radians(PICKUP.lat), math.radians(lat)
    dp, dl = p2 - p1, math.radians(lng - PICKUP.lng)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_KM * math.asin(math.sqrt(h))


# (north km, east km) from the pickup, on both sides of the 10 km radius and in every direction.
INSIDE = [(0.5, 0.0), (9.5, 0.0), (0.0, 9.5), (-9.5, 0.0), (0.0, -9.5), (-6.6, -6.6)]
OUTSIDE = [
    (10.5, 0.0),
    (0.0, 10.5),
    (-10.5, 0.0),
    (0.0, -10.5),
    (7.5, 7.5),  # inside the radius's bounding box, 10.6 km away: only the distance leaves it out
    (-7.5, -7.5),
    (222.0, 0.0),
]


async def place(client: CommandClient, where: tuple[float, float], kind: str = "open_17ft") -> str:
    """A new transporter with one vehicle of `kind` at `where` (north km, east km)."""
    transporter = f"t-{uuid.uuid4().hex[:8]}"
    lat, lng = offset(*where)
    cmd = RegisterVehicle(
        transporter_id=transporter,
        vehicle_id=f"v-{transporter}",
        vehicle_type=kind,
        lat=lat,
        lng=lng,
    )
    assert (await client.send(cmd)).failure is None
    return transporter


def test_the_default_radius_is_25_km() -> None:
    """Without BROADCAST_RADIUS_KM a service matches within the contract's default 25 km."""
    env = {"DATABASE_URL": "postgresql://x", "REDIS_URL": "redis://x", "JWT_SECRET": "a" * 32}
    assert load_settings({**env, "JWT_REFRESH_SECRET": "b" * 32}).broadcast_radius_km == 25.0


async def test_search_notifies_transporters_within_the_radius_only(
    client: CommandClient, database_url: str
) -> None:
    """A search reaches every transporter with a vehicle of the requested type within
    BROADCAST_RADIUS_KM of the pickup (10 km here) and no one farther away, in any direction,
    nor a transporter at the pickup whose vehicle is of another type."""
    assert all(distance_km(*offset(*w)) < RADIUS_KM - 0.4 for w in INSIDE)
    assert all(distance_km(*offset(*w)) > RADIUS_KM + 0.4 for w in OUTSIDE)
    near = [await place(client, w) for w in INSIDE]
    far = [await place(client, w) for w in OUTSIDE]
    other_type = await place(client, (0.0, 0.0), kind="tipper_10ft")
    ref = ok(await client.send(search(f"c-{uuid.uuid4().hex[:8]}")), BroadcastRef)
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(
            "SELECT transporter_id FROM broadcast_recipients WHERE broadcast_id = %s",
            (ref.broadcast_id,),
        )
        notified = {r[0] for r in await cur.fetchall()}
    assert set(near) <= notified, set(near) - notified
    assert not notified & {*far, other_type}, notified & {*far, other_type}


async def test_identical_search_returns_the_active_broadcast_and_another_is_refused(
    client: CommandClient,
) -> None:
    """While a broadcast is active, the same search replays it and a different one is 409."""
    await fleet(client, 1)
    customer = f"c-{uuid.uuid4().hex[:8]}"
    first = ok(await client.send(search(customer)), BroadcastRef)
    again = ok(await client.send(search(customer)), BroadcastRef)
    assert again == BroadcastRef(broadcast_id=first.broadcast_id, replayed=True)
    other = await client.send(search(customer, note="other"))
    assert other.failure is not None and other.failure.code == "active_broadcast_exists"
    assert other.failure.details == {"broadcastId": first.broadcast_id}


@pytest.mark.parametrize("round_", range(ROUNDS))
async def test_many_claims_on_one_slot_have_exactly_one_winner(
    client: CommandClient, database_url: str, round_: int
) -> None:
    """Sixty transporters claim the only slot at once, through two acceptance processes: one
    wins, every other is told it is gone with none left, and PostgreSQL holds one assignment."""
    transporters = await fleet(client, 60)
    ref = ok(await client.send(search(f"c-{uuid.uuid4().hex[:8]}")), BroadcastRef)
    bid = ref.broadcast_id
    replies = await asyncio.gather(
        *(
            client.send(AcceptSlots(transporter_id=t, broadcast_id=bid, vehicle_type="open_17ft"))
            for t in transporters
        )
    )
    winners = [t for t, r in zip(transporters, replies, strict=True) if r.failure is None]
    assert len(winners) == 1, [r.failure for r in replies]
    refused = [r.failure for r in replies if r.failure is not None]
    assert {(f.code, f.details.get("available")) for f in refused} == {("no_longer_available", 0)}
    result = ok(next(r for r in replies if r.failure is None), AcceptResult)
    assert result.broadcast_state == "fully_filled"
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(
            "SELECT transporter_id FROM assignments WHERE broadcast_id = %s", (bid,)
        )
        assert await cur.fetchall() == [(winners[0],)]


async def test_cancel_wins_over_later_claims(client: CommandClient) -> None:
    """After a cancel commits, claims on that broadcast are refused as cancelled."""
    [t] = await fleet(client, 1)
    customer = f"c-{uuid.uuid4().hex[:8]}"
    bid = ok(await client.send(search(customer, quantity=2)), BroadcastRef).broadcast_id
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
    assert again.replayed is True
