"""The broadcast and acceptance services executing commands sent over the bus, as real processes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import psycopg
import pytest

from libs.events.bus import CommandClient
from libs.events.commands import (
    AcceptResult,
    AcceptSlots,
    BroadcastRef,
    CancelBroadcast,
)
from tests.processes import environment, services
from tests.services.helpers import command_client, fleet, ok, search


@pytest.fixture(scope="module")
def running(service_env_module: dict[str, str]) -> Iterator[None]:
    with services(["broadcast", "acceptance"], environment(service_env_module)):
        yield


@pytest.fixture
async def client(redis_url: str, running: None, module_prefix: str) -> AsyncIterator[CommandClient]:
    async for c in command_client(redis_url, module_prefix):
        yield c


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
        )
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
    assert again == BroadcastRef(broadcast_id=first.broadcast_id, replayed=True)
    other = await client.send(search(customer, note="other"))
    assert other.failure is not None and other.failure.code == "active_broadcast_exists"
    assert other.failure.details == {"broadcastId": first.broadcast_id}


async def test_many_claims_on_one_slot_have_exactly_one_winner(client: CommandClient) -> None:
    """Fifty transporters claim the only slot at once: one wins, the rest are told it is gone."""
    transporters = await fleet(client, 50)
    ref = ok(await client.send(search(f"c-{uuid.uuid4().hex[:8]}")), BroadcastRef)
    bid = ref.broadcast_id
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
    assert result.broadcast_state == "fully_filled"


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
