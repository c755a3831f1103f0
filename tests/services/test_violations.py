"""A write that runs into a unique index of the read models is translated where it is made
(`libs/readmodel/violations.py`), against a real PostgreSQL: the backstop indexes answer the
same as the services' own checks, and the transaction stays usable to refuse cleanly."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from libs.events.catalogue import AcceptedSlot, BroadcastCreated, Location, TruckSlot
from libs.events.commands import Rejected
from libs.events.store import ConcurrencyConflict
from libs.readmodel.assignments import put_driver_on
from libs.readmodel.broadcasts import accept_truck_requests, insert_broadcast

PLACE = Location(lat=12.97, lng=77.59)
ACTIVE = ["created", "broadcasting"]


def _created(customer: str, slots: int = 1) -> BroadcastCreated:
    now = datetime.now(UTC)
    return BroadcastCreated(
        broadcast_id=str(uuid.uuid4()),
        customer_id=customer,
        pickup=PLACE,
        drop=PLACE,
        truck_requests=tuple(
            TruckSlot(truck_request_id=str(uuid.uuid4()), vehicle_type="open_17ft")
            for _ in range(slots)
        ),
        created_at=now,
        expires_at=now + timedelta(seconds=120),
    )


@pytest.fixture
async def tx(conn: psycopg.AsyncConnection[Any]) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """The test's writes in one transaction, rolled back afterwards."""
    async with conn.transaction(force_rollback=True):
        yield conn


async def _assignments(conn: psycopg.AsyncConnection[Any], count: int) -> list[str]:
    """`count` accepted assignments of a new broadcast."""
    created = _created(f"c-{uuid.uuid4().hex[:8]}", slots=count)
    await insert_broadcast(conn, created, ACTIVE, ["t-1"], version=2)
    won = [
        AcceptedSlot(
            truck_request_id=s.truck_request_id,
            assignment_id=str(uuid.uuid4()),
            vehicle_type=s.vehicle_type,
        )
        for s in created.truck_requests
    ]
    await accept_truck_requests(conn, created.broadcast_id, "t-1", won, at=created.created_at)
    return [s.assignment_id for s in won]


async def test_a_second_active_broadcast_of_a_customer_is_a_conflict(
    tx: psycopg.AsyncConnection[Any],
) -> None:
    """`broadcasts_one_active_per_customer` makes the losing search decide again."""
    customer = f"c-{uuid.uuid4().hex[:8]}"
    await insert_broadcast(tx, _created(customer), ACTIVE, ["t-1"], version=2)
    with pytest.raises(ConcurrencyConflict):
        async with tx.transaction():
            await insert_broadcast(tx, _created(customer), ACTIVE, ["t-1"], version=2)


async def test_a_busy_driver_or_vehicle_is_refused_by_the_index(
    tx: psycopg.AsyncConnection[Any],
) -> None:
    """A driver, or a vehicle, already on another active assignment is `driver_busy` or
    `vehicle_busy` from the unique index alone, and the transaction goes on."""
    first, second = await _assignments(tx, 2)
    await put_driver_on(tx, first, "d-1", "v-1")
    with pytest.raises(Rejected) as driver:
        await put_driver_on(tx, second, "d-1", "v-2")
    with pytest.raises(Rejected) as vehicle:
        await put_driver_on(tx, second, "d-2", "v-1")
    assert driver.value.failure.code == "driver_busy"
    assert vehicle.value.failure.code == "vehicle_busy"
    await put_driver_on(tx, second, "d-2", "v-2")
