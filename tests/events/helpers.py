"""Shared pieces of the event-bus tests: probe events, a runner wired to a test handler."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from libs.events.catalogue import BusProbe
from libs.events.relay import OutboxRelay, RelayConfig
from libs.events.store import append

Conn = psycopg.AsyncConnection[Any]


async def append_probes(conn: Conn, stream_id: str, count: int, start: int = 0) -> None:
    """Append `count` probe events to `stream_id`, one transaction each."""
    for i in range(start, start + count):
        async with conn.transaction():
            await append(conn, stream_id, i, [BusProbe(sequence=i)])


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 10.0, every: float = 0.02
) -> None:
    """Poll `check` until it is true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(every)


async def stream_length(redis: Redis, stream: str) -> int:
    return int(await redis.xlen(stream))


async def run_until(stop: asyncio.Event, *coroutines: Awaitable[None]) -> list[asyncio.Task[None]]:
    return [asyncio.create_task(c) for c in coroutines]  # type: ignore[arg-type]


def relay_of(
    pool: AsyncConnectionPool[Any],
    database_url: str,
    redis: Redis,
    prefix: str,
    config: RelayConfig | None = None,
) -> OutboxRelay:
    """A relay of its own (its own holder name), its lease taken through `pool`."""
    return OutboxRelay(
        database_url, redis, prefix, config, pool=pool, holder=f"relay-{uuid.uuid4().hex[:6]}"
    )


@contextlib.asynccontextmanager
async def running_relay(
    pool: AsyncConnectionPool[Any],
    database_url: str,
    redis: Redis,
    prefix: str,
    config: RelayConfig | None = None,
) -> AsyncIterator[OutboxRelay]:
    """`relay_of`'s relay running in a task for the block, then stopped (within 10 s)."""
    relay = relay_of(pool, database_url, redis, prefix, config)
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        yield relay
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
