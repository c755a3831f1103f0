"""The outbox relay: committed events reach Redis once, even when the writer died, one leader at a
time, and recent events are republished after Redis lost its data."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from libs.events import outbox
from libs.events.codec import envelope_from_fields
from libs.events.lease import LeaseConfig
from libs.events.relay import OutboxRelay, RelayConfig
from libs.events.streams import events_stream
from tests.events.helpers import append_probes, eventually, relay_of, running_relay

WRITER = """
import asyncio, os, signal, sys
import psycopg
from libs.events.catalogue import BusProbe
from libs.events.store import append

async def main():
    async with await psycopg.AsyncConnection.connect(sys.argv[1], autocommit=True) as c:
        async with c.transaction():
            await append(c, sys.argv[2], 0, [BusProbe(sequence=7)])
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def database_url(module_database: str) -> str:
    """This module's own database: these tests need to be its only relay, and services started
    by other modules (the gateway tests' system runs all session) relay on the shared one."""
    return module_database


@pytest.fixture
async def relay_task(
    pool: AsyncConnectionPool, database_url: str, redis: Redis, prefix: str
) -> AsyncIterator[OutboxRelay]:
    config = RelayConfig(poll_interval_s=0.2)
    async with running_relay(pool, database_url, redis, prefix, config) as running:
        yield running


async def _entries(redis: Redis, stream: str) -> list[tuple[str, int]]:
    rows = await redis.xrange(stream)
    return [(e.stream_id, e.version) for e in (envelope_from_fields(f) for _, f in rows)]


async def _drain_outbox(database_url: str) -> None:
    """Earlier tests share the database: make sure their events are not in this test's way."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as c:
        await c.execute("DELETE FROM outbox")


@pytest.mark.process  # the writer is a process
async def test_event_committed_by_a_writer_killed_before_publishing_is_published(
    pool: AsyncConnectionPool, database_url: str, redis: Redis, prefix: str
) -> None:
    """A writer SIGKILLed right after its commit still gets its event onto the Redis stream."""
    await _drain_outbox(database_url)
    stream_id = f"probe-{uuid.uuid4()}"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    done = subprocess.run(
        [sys.executable, "-c", WRITER, database_url, stream_id], env=env, check=False
    )
    assert done.returncode == -9
    target = events_stream(prefix, "probe")
    assert await redis.xlen(target) == 0
    relay = relay_of(pool, database_url, redis, prefix, RelayConfig(poll_interval_s=0.2))
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        await eventually(lambda: _has(redis, target, stream_id))
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert (stream_id, 1) in await _entries(redis, target)


async def _has(redis: Redis, stream: str, stream_id: str) -> bool:
    return any(s == stream_id for s, _ in await _entries(redis, stream))


async def test_two_relays_publish_every_event_exactly_once_in_order(
    pool: AsyncConnectionPool,
    database_url: str,
    redis: Redis,
    prefix: str,
    conn: psycopg.AsyncConnection,
) -> None:
    """With two relays running, each committed event appears once, in version order."""
    await _drain_outbox(database_url)
    relays = [
        relay_of(pool, database_url, redis, prefix, RelayConfig(poll_interval_s=0.2))
        for _ in range(2)
    ]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(r.run(stop)) for r in relays]
    stream_id, target = f"probe-{uuid.uuid4()}", events_stream(prefix, "probe")
    try:
        await append_probes(conn, stream_id, 150)
        await eventually(lambda: _count(redis, target, stream_id, 150))
    finally:
        stop.set()
        await asyncio.gather(*(asyncio.wait_for(t, 10) for t in tasks))
    mine = [v for s, v in await _entries(redis, target) if s == stream_id]
    assert mine == list(range(1, 151))
    assert sorted(r.published > 0 for r in relays) == [False, True]


async def _count(redis: Redis, stream: str, stream_id: str, expected: int) -> bool:
    return sum(s == stream_id for s, _ in await _entries(redis, stream)) >= expected


async def test_recent_events_are_republished_after_redis_lost_its_data(
    database_url: str,
    redis: Redis,
    prefix: str,
    conn: psycopg.AsyncConnection,
    relay_task: OutboxRelay,
) -> None:
    """After every key under the prefix is deleted, recent events return, then new ones follow."""
    stream_id, target = f"probe-{uuid.uuid4()}", events_stream(prefix, "probe")
    await append_probes(conn, stream_id, 3)
    await eventually(lambda: _count(redis, target, stream_id, 3))
    keys = [k async for k in redis.scan_iter(match=f"{prefix}*")]
    await redis.delete(*keys)
    await append_probes(conn, stream_id, 1, start=3)
    await eventually(lambda: _count(redis, target, stream_id, 4))
    mine = [v for s, v in await _entries(redis, target) if s == stream_id]
    assert mine == [1, 2, 3, 4]


async def test_a_standby_relay_takes_over_when_the_leader_stops(
    pool: AsyncConnectionPool,
    database_url: str,
    redis: Redis,
    prefix: str,
    conn: psycopg.AsyncConnection,
) -> None:
    """When the leading relay stops, the one standing by leads and publishes what follows."""
    await _drain_outbox(database_url)
    config = RelayConfig(poll_interval_s=0.2, lease=LeaseConfig(retry_s=0.1))
    first, second = (relay_of(pool, database_url, redis, prefix, config) for _ in range(2))
    stops = [asyncio.Event(), asyncio.Event()]
    tasks = [asyncio.create_task(first.run(stops[0]))]
    stream_id, target = f"probe-{uuid.uuid4()}", events_stream(prefix, "probe")
    await append_probes(conn, stream_id, 1)
    await eventually(lambda: _count(redis, target, stream_id, 1))
    tasks.append(asyncio.create_task(second.run(stops[1])))
    stops[0].set()
    await asyncio.wait_for(tasks[0], 10)
    await append_probes(conn, stream_id, 1, start=1)
    try:
        await eventually(lambda: _count(redis, target, stream_id, 2))
    finally:
        stops[1].set()
        await asyncio.wait_for(tasks[1], 10)
    assert (first.published, second.published) == (1, 1)


async def _manual_vacuums(database_url: str) -> int:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as c:
        cur = await c.execute(
            "SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'outbox'"
        )
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def test_the_relay_vacuums_the_outbox_once_it_removed_enough_rows(
    pool: AsyncConnectionPool,
    database_url: str,
    redis: Redis,
    prefix: str,
    conn: psycopg.AsyncConnection,
) -> None:
    """Rows the relay deleted do not wait for autovacuum (at most once a minute): after removing
    `vacuum_after_rows` rows the relay vacuums the outbox itself, and not before."""
    await _drain_outbox(database_url)
    config = RelayConfig(poll_interval_s=0.2, vacuum_after_rows=25)
    relay = relay_of(pool, database_url, redis, prefix, config)
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        before = await _manual_vacuums(database_url)
        stream_id = f"probe-{uuid.uuid4()}"
        await append_probes(conn, stream_id, 20)
        await eventually(lambda: _count(redis, events_stream(prefix, "probe"), stream_id, 20))
        assert await _manual_vacuums(database_url) == before
        await append_probes(conn, stream_id, 10, start=20)
        await eventually(lambda: _vacuumed_since(database_url, before))
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def _count(redis: Redis, stream: str, stream_id: str, wanted: int) -> bool:
    return sum(1 for s, _ in await _entries(redis, stream) if s == stream_id) >= wanted


async def _vacuumed_since(database_url: str, before: int) -> bool:
    return await _manual_vacuums(database_url) > before


async def _log_rows(conn: psycopg.AsyncConnection, epoch: str) -> list[tuple[int, list[int]]]:
    cur = await conn.execute(
        "SELECT seq, positions FROM relay_log WHERE epoch = %s ORDER BY seq", (epoch,)
    )
    return [(int(s), list(p)) for s, p in await cur.fetchall()]


async def test_taking_a_batch_logs_it_in_the_same_transaction_and_an_empty_one_not_at_all(
    database_url: str, conn: psycopg.AsyncConnection
) -> None:
    """The relay's one statement per batch: on an empty outbox it takes nothing and logs
    nothing; with events it takes the oldest, in order, and logs exactly their positions as the
    batch number given; rolled back (publishing failed), the events are back in the outbox and
    the log has no such batch."""
    await _drain_outbox(database_url)
    epoch = f"test-{uuid.uuid4().hex}"
    async with conn.transaction():
        assert await outbox.take_and_log(conn, 10, epoch, 1) == []
    assert await _log_rows(conn, epoch) == []
    async with conn.transaction():
        await append_probes(conn, f"probe-{uuid.uuid4()}", 5)
    cur = await conn.execute("SELECT position FROM outbox ORDER BY position")
    positions = [int(r[0]) for r in await cur.fetchall()]
    with contextlib.suppress(_PublishFailed):
        async with conn.transaction():
            await outbox.take_and_log(conn, 3, epoch, 1)
            raise _PublishFailed
    assert await _log_rows(conn, epoch) == []
    async with conn.transaction():
        taken = await outbox.take_and_log(conn, 3, epoch, 1)
    assert [int(row[0]) for row in taken] == positions[:3]
    assert await _log_rows(conn, epoch) == [(1, positions[:3])]
    cur = await conn.execute("SELECT position FROM outbox ORDER BY position")
    assert [int(r[0]) for r in await cur.fetchall()] == positions[3:]


class _PublishFailed(Exception):
    """Stands for a batch that Redis refused: the relay's transaction rolls back."""
