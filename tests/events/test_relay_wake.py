"""How the relay learns of new commits: writers notify it only while it sleeps (it holds the
wake-up lock), and it sleeps only once no writer is between its append and its commit."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from libs.events import outbox
from libs.events.catalogue import BusProbe
from libs.events.relay import OutboxRelay, RelayConfig
from libs.events.store import OUTBOX_CHANNEL, append
from libs.events.streams import events_stream
from tests.events.helpers import append_probes, eventually, relay_of, stream_length

# Far longer than any wait below: an event published in time was not found by the relay's timer.
POLL_S = 60.0


@pytest.fixture(scope="module")
def database_url(module_database: str) -> str:
    """This module's own database: the relay here must be the only one."""
    return module_database


@pytest.fixture
async def relay(
    pool: AsyncConnectionPool, database_url: str, redis: Redis, prefix: str
) -> AsyncIterator[OutboxRelay]:
    async with _relay(pool, database_url, redis, prefix) as running:
        yield running


async def _sleeping(conn: psycopg.AsyncConnection) -> bool:
    """Some session holds this database's wake-up lock (the relay, asleep); `pg_locks` shows
    every database's."""
    cur = await conn.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND mode = 'ExclusiveLock' AND classid = %s AND objid = %s"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        (outbox.WAKE_LOCK >> 32, outbox.WAKE_LOCK & 0xFFFF_FFFF),
    )
    row = await cur.fetchone()
    return bool(row and row[0])


async def test_a_writer_notifies_its_commit_only_while_the_wake_up_lock_is_held(
    database_url: str, conn: psycopg.AsyncConnection
) -> None:
    """With the lock free (the relay is looking at the outbox anyway) a commit sends no
    notification; with it held (the relay sleeps) it does. Notifications arrive in commit
    order, so the one received is the second commit's."""
    connect = psycopg.AsyncConnection.connect
    async with (
        await connect(database_url, autocommit=True) as listener,
        await connect(database_url, autocommit=True) as sleeper,
    ):
        await listener.execute(f"LISTEN {OUTBOX_CHANNEL}")
        stream_id = f"probe-{uuid.uuid4()}"
        await append_probes(conn, stream_id, 1)
        cur = await sleeper.execute(outbox.WAKE_TRY)
        assert await cur.fetchone() == (True,)
        await append_probes(conn, stream_id, 1, start=1)
        got = [n async for n in listener.notifies(timeout=5, stop_after=1)]
        assert len(got) == 1
        assert [n async for n in listener.notifies(timeout=0.5)] == []


async def test_an_event_committed_while_the_relay_sleeps_is_published_at_once(
    database_url: str,
    redis: Redis,
    prefix: str,
    conn: psycopg.AsyncConnection,
    relay: OutboxRelay,
) -> None:
    """Once the relay found the outbox empty it sleeps holding the lock; the next commit
    notifies it and is published well before its next look by timer."""
    await eventually(lambda: _sleeping(conn))
    target = events_stream(prefix, "probe")
    published = await stream_length(redis, target)  # recent events, republished to a new epoch
    await append_probes(conn, f"probe-{uuid.uuid4()}", 1)
    await eventually(lambda: _has(redis, target, published + 1), timeout=10)


async def test_an_event_appended_before_the_relays_last_look_and_committed_after_it_is_published(
    pool: AsyncConnectionPool,
    database_url: str,
    redis: Redis,
    prefix: str,
    conn: psycopg.AsyncConnection,
) -> None:
    """A writer between its append and its commit holds the lock shared, so the relay, finding
    nothing to publish meanwhile, cannot take it and sleep: it keeps looking, and publishes the
    event soon after the commit (which sent no notification), not at its timer."""
    target = events_stream(prefix, "probe")
    async with await psycopg.AsyncConnection.connect(database_url) as writer:
        await append(writer, f"probe-{uuid.uuid4()}", 0, [BusProbe(sequence=1)])  # BEGIN
        async with _relay(pool, database_url, redis, prefix) as relay:
            await eventually(lambda: _looked(relay, 5))  # (recent events republished first)
            published = await stream_length(redis, target)
            assert not await _sleeping(conn)
            await writer.commit()
            await eventually(lambda: _has(redis, target, published + 1), timeout=10)
            await eventually(lambda: _sleeping(conn))


async def _looked(relay: OutboxRelay, times: int) -> bool:
    return relay.looks >= times


@contextlib.asynccontextmanager
async def _relay(
    pool: AsyncConnectionPool, database_url: str, redis: Redis, prefix: str
) -> AsyncIterator[OutboxRelay]:
    relay = relay_of(pool, database_url, redis, prefix, RelayConfig(poll_interval_s=POLL_S))
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        yield relay
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def _has(redis: Redis, stream: str, count: int) -> bool:
    return await stream_length(redis, stream) >= count
