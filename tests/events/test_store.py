"""The PostgreSQL event store: ordered appends, optimistic concurrency, consumer dedupe."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest

from libs.events.catalogue import BusProbe
from libs.events.store import ConcurrencyConflict, append, first_delivery, read_stream


async def test_append_then_read_returns_events_in_version_order(
    conn: psycopg.AsyncConnection,
) -> None:
    """Events appended in two writes come back in version order with global positions rising."""
    stream = f"probe-{uuid.uuid4()}"
    async with conn.transaction():
        await append(conn, stream, 0, [BusProbe(sequence=1), BusProbe(sequence=2)])
    async with conn.transaction():
        await append(conn, stream, 2, [BusProbe(sequence=3)], correlation_id="c-1")
    events = await read_stream(conn, stream)
    assert [e.version for e in events] == [1, 2, 3]
    assert [e.event.sequence for e in events] == [1, 2, 3]  # type: ignore[union-attr]
    assert events[0].position < events[1].position < events[2].position
    assert events[2].correlation_id == "c-1"


async def test_append_with_stale_version_is_a_conflict(conn: psycopg.AsyncConnection) -> None:
    """Appending after a version the stream has already passed raises ConcurrencyConflict."""
    stream = f"probe-{uuid.uuid4()}"
    async with conn.transaction():
        await append(conn, stream, 0, [BusProbe(sequence=1)])
    with pytest.raises(ConcurrencyConflict) as caught:
        async with conn.transaction():
            await append(conn, stream, 0, [BusProbe(sequence=2)])
    assert caught.value.stream_id == stream
    assert len(await read_stream(conn, stream)) == 1


@pytest.mark.parametrize("round_", range(10))
async def test_concurrent_appends_at_one_version_have_exactly_one_winner(
    database_url: str, round_: int
) -> None:
    """Many writers on separate connections append at the same expected version: one wins."""
    stream = f"probe-{uuid.uuid4()}"
    writers = 24
    connections = [
        await psycopg.AsyncConnection.connect(database_url, autocommit=True) for _ in range(writers)
    ]
    start = asyncio.Event()

    async def write(c: psycopg.AsyncConnection, n: int) -> bool:
        await start.wait()
        try:
            async with c.transaction():
                await append(c, stream, 0, [BusProbe(sequence=n)])
        except ConcurrencyConflict:
            return False
        return True

    try:
        tasks = [asyncio.create_task(write(c, n)) for n, c in enumerate(connections)]
        await asyncio.sleep(0)
        start.set()
        outcomes = await asyncio.gather(*tasks)
    finally:
        for c in connections:
            await c.close()
    assert outcomes.count(True) == 1
    async with await psycopg.AsyncConnection.connect(database_url) as c:
        stored = await read_stream(c, stream)
    assert len(stored) == 1
    assert stored[0].event.sequence == outcomes.index(True)  # type: ignore[union-attr]


async def test_first_delivery_is_true_once_per_group_and_event(
    conn: psycopg.AsyncConnection,
) -> None:
    """A consumer group sees each event id as new exactly once; other groups are independent."""
    event_id = str(uuid.uuid4())
    assert await first_delivery(conn, "group-a", event_id) is True
    assert await first_delivery(conn, "group-a", event_id) is False
    assert await first_delivery(conn, "group-b", event_id) is True
