"""The projector keeps each broadcast's order when a projection fails (contract section 7), on a
real Redis stream and PostgreSQL: while an event's projection fails (its PostgreSQL read times
out behind a table lock), the broadcast's later events wait behind it and other broadcasts'
events go on; once it succeeds, the broadcast's messages arrive in the order of its events."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from typing import Any

import msgspec
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from libs.events.catalogue import (
    BroadcastCancelled,
    CancelledAssignment,
    DomainEvent,
    DriverAssigned,
    Envelope,
)
from libs.events.codec import ENVELOPE_FIELD, encode
from libs.events.dispatch import stream_key
from libs.events.runner import StreamRunner, ensure_group
from libs.events.store import append
from libs.inbox.inbox import Inbox
from services.fanout.projector import GROUP, RUNNER, Projector
from tests.events.helpers import eventually
from tests.realtime.test_units import CREATED, STARTED, accepted

FAST = replace(RUNNER, block_ms=20, retry_first_pause_s=0.05, retry_max_pause_s=0.2)
LOCK_TIMEOUT_MS = 100


@pytest.fixture
async def impatient_pool(database_url: str) -> AsyncIterator[AsyncConnectionPool[Any]]:
    """The projector's pool: a statement waiting over 100 ms for a lock fails."""
    options = f"-c lock_timeout={LOCK_TIMEOUT_MS}"
    async with AsyncConnectionPool(
        database_url, min_size=1, max_size=2, kwargs={"options": options}
    ) as opened:
        yield opened


def of(bid: str, *events: DomainEvent) -> list[DomainEvent]:
    """`events` (of the broadcast `b1` of customer `c1`) for broadcast `bid` of customer `bid`."""
    return [msgspec.structs.replace(e, broadcast_id=bid) for e in events]


def assigned_then_cancelled(bid: str) -> list[DomainEvent]:
    """Created, started, one claim, a driver on it, then the customer cancels."""
    assign = DriverAssigned(
        assignment_id="a1", broadcast_id=bid, transporter_id="t1", driver_id="d1", vehicle_id="v1"
    )
    cancel = BroadcastCancelled(
        broadcast_id=bid,
        customer_id=bid,
        cancelled_assignments=(
            CancelledAssignment(assignment_id="a1", transporter_id="t1", driver_id="d1"),
        ),
    )
    created = msgspec.structs.replace(CREATED, customer_id=bid)
    return [*of(bid, created, STARTED, accepted("t1", ("r1", "a1", "open"))), assign, cancel]


async def stored(
    conn: psycopg.AsyncConnection[Any], events: Sequence[DomainEvent]
) -> list[Envelope]:
    async with conn.transaction():
        return await append(conn, f"broadcast-{uuid.uuid4()}", 0, events)


async def customer_frames(inbox: Inbox, customer: str) -> list[str]:
    """What the customer got: each frame's type, with the state for state changes."""
    found = []
    for _, raw in await inbox.after(f"customer:{customer}", (0, 0), 100):
        frame = json.loads(raw)
        found.append(frame["data"].get("state", frame["type"]))
    return found


async def times_delivered(redis: Redis, stream: str, entry_id: str) -> int:
    pending: Any = await redis.xpending_range(stream, GROUP, entry_id, entry_id, 1)
    return int(pending[0]["times_delivered"]) if pending else 0


async def test_a_failing_projection_holds_back_its_broadcast_and_no_other(
    impatient_pool: AsyncConnectionPool[Any],
    redis: Redis,
    prefix: str,
    conn: psycopg.AsyncConnection[Any],
    database_url: str,
) -> None:
    """While `assignments` is locked, the driver assignment's projection (which reads it) fails
    again and again: the cancel after it is not delivered, another broadcast's messages all are;
    after the lock goes, the customer has every message in the order of the events."""
    x, y = f"bx{uuid.uuid4().hex[:8]}", f"by{uuid.uuid4().hex[:8]}"
    xs = await stored(conn, assigned_then_cancelled(x))
    ys = await stored(conn, of(y, msgspec.structs.replace(CREATED, customer_id=y), STARTED))
    stream, inbox = prefix + "events", Inbox(redis, prefix)
    await ensure_group(redis, stream, GROUP)
    ids = {}
    for envelope in (*xs[:3], ys[0], xs[3], xs[4], ys[1]):
        ids[envelope.event_id] = (
            await redis.xadd(stream, {ENVELOPE_FIELD: encode(envelope)})
        ).decode()
    runner = StreamRunner(
        redis,
        stream=stream,
        group=GROUP,
        consumer="leader",
        handler=Projector(impatient_pool, inbox).handler(),
        dead_letter=prefix + "dead-letter",
        config=FAST,
        key=stream_key,
    )
    stop = asyncio.Event()
    async with await psycopg.AsyncConnection.connect(database_url) as locker:
        await locker.execute("LOCK TABLE assignments IN ACCESS EXCLUSIVE MODE")
        task = asyncio.create_task(runner.run(stop))
        try:
            assigned = ids[xs[3].event_id]
            await eventually(lambda: _at_least(times_delivered(redis, stream, assigned), 3))
            await eventually(lambda: _equal(customer_frames(inbox, y), ["created", "broadcasting"]))
            assert await customer_frames(inbox, x) == [
                "created",
                "broadcasting",
                "truck_accepted",
                "partially_filled",
            ]
        finally:
            await locker.rollback()
        try:
            await eventually(lambda: _length(customer_frames(inbox, x), 6))
            assert await customer_frames(inbox, x) == [
                "created",
                "broadcasting",
                "truck_accepted",
                "partially_filled",
                "driver_assigned",
                "cancelled",
            ]
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)


async def _at_least(found: Any, count: int) -> bool:
    return int(await found) >= count


async def _equal(found: Any, expected: list[str]) -> bool:
    return list(await found) == expected


async def _length(found: Any, count: int) -> bool:
    return len(await found) >= count
