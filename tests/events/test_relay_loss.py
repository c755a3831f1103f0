"""Redis losing data never loses a committed event (contract section 8): after a wipe every
recently published event is on its stream again, whatever order the events committed in, and
after losing only its newest writes (a restart from an older snapshot) the lost tail comes back
within 5 s."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from chaos.redis_server import PrivateRedis, private_redis
from libs.events.catalogue import BusProbe
from libs.events.codec import envelope_from_fields
from libs.events.relay import OutboxRelay, RelayConfig
from libs.events.store import append
from libs.events.streams import events_stream
from tests.events.helpers import append_probes, eventually, relay_of

BACK_WITHIN_S = 5.0


@pytest.fixture(scope="module")
def database_url(module_database: str) -> str:
    """These tests need to be the database's only relay."""
    return module_database


async def _relay(
    pool: AsyncConnectionPool, database_url: str, redis: Redis, prefix: str, poll_s: float = 0.2
) -> AsyncIterator[OutboxRelay]:
    relay = relay_of(pool, database_url, redis, prefix, RelayConfig(poll_interval_s=poll_s))
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    yield relay
    stop.set()
    await asyncio.wait_for(task, 10)


@pytest.fixture
async def relay(
    pool: AsyncConnectionPool, database_url: str, redis: Redis, prefix: str
) -> AsyncIterator[OutboxRelay]:
    """A relay that notices a wipe only when it publishes (no periodic check comes first)."""
    async for r in _relay(pool, database_url, redis, prefix, poll_s=60.0):
        yield r


async def _versions(redis: Redis, stream: str, stream_id: str) -> list[int]:
    rows = await redis.xrange(stream)
    found = (envelope_from_fields(f) for _, f in rows)
    return [e.version for e in found if e.stream_id == stream_id]


async def _has(redis: Redis, stream: str, stream_id: str, versions: list[int]) -> bool:
    return await _versions(redis, stream, stream_id) == versions


async def test_after_a_wipe_events_that_committed_out_of_position_order_all_return(
    redis: Redis, prefix: str, conn: psycopg.AsyncConnection, database_url: str, relay: OutboxRelay
) -> None:
    """An event that took its position first but committed last: the event published before it
    (with a higher position) is republished too when the wipe is noticed on its publish."""
    early, late = f"probe-{uuid.uuid4()}", f"probe-{uuid.uuid4()}"
    target = events_stream(prefix, "probe")
    async with await psycopg.AsyncConnection.connect(database_url) as slow:
        await append(slow, early, 0, [BusProbe(sequence=0)])  # takes its position, uncommitted
        await append_probes(conn, late, 1)  # a higher position, committed first
        await eventually(lambda: _has(redis, target, late, [1]))
        keys = [k async for k in redis.scan_iter(match=f"{prefix}*")]
        await redis.delete(*keys)
        await slow.commit()
    await eventually(lambda: _has(redis, target, early, [1]))
    await eventually(lambda: _has(redis, target, late, [1]), timeout=BACK_WITHIN_S)


@pytest.mark.process  # a private redis-server process
async def test_the_newest_writes_lost_by_a_restart_from_an_older_snapshot_return(
    pool: AsyncConnectionPool,
    prefix: str,
    conn: psycopg.AsyncConnection,
    database_url: str,
    tmp_path: Path,
) -> None:
    """Redis restarted from a snapshot taken before the last events were published (its epoch
    key survives): those events are on their stream again within 5 s."""
    stream_id, target = f"probe-{uuid.uuid4()}", events_stream(prefix, "probe")
    with private_redis(tmp_path) as server:
        redis = Redis.from_url(  # reconnects by itself across the restart
            server.url, retry=Retry(NoBackoff(), 3), retry_on_error=[RedisConnectionError]
        )
        async for _ in _relay(pool, database_url, redis, prefix):
            await append_probes(conn, stream_id, 2)
            await eventually(lambda: _has(redis, target, stream_id, [1, 2]))
            older = server.snapshot()
            await append_probes(conn, stream_id, 2, start=2)
            await eventually(lambda: _has(redis, target, stream_id, [1, 2, 3, 4]))
            await _restart(server, older)
            assert await _versions(redis, target, stream_id) == [1, 2]  # the tail is gone
            await eventually(
                lambda: _has(redis, target, stream_id, [1, 2, 3, 4]), timeout=BACK_WITHIN_S
            )
        await redis.aclose()


async def _restart(server: PrivateRedis, snapshot: Path) -> None:
    await asyncio.to_thread(server.restart_from, snapshot)
