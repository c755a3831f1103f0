"""What the harness watches while the run goes on: who holds each single-holder role (the
`leases` table, every 200 ms) and Redis's memory (`INFO memory`, every 2 s)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import psycopg
import redis.asyncio as aredis
from redis.exceptions import RedisError

from chaos.faults import HARNESS_APP
from chaos.records import LeaseSample, MemorySample, RunLog

LEASE_EVERY_S = 0.2
MEMORY_EVERY_S = 2.0
_LEASES = "SELECT role, holder, token, extract(epoch FROM acquired_at) FROM leases ORDER BY role"


async def watch_leases(database_url: str, log: RunLog, stop: asyncio.Event) -> None:
    """Record every change of a lease row; reconnect after any database error."""
    last: dict[str, tuple[str, int]] = {}
    while not stop.is_set():
        try:
            async with await psycopg.AsyncConnection.connect(
                database_url, application_name=HARNESS_APP, autocommit=True, connect_timeout=3
            ) as conn:
                while not stop.is_set():
                    await _sample_leases(conn, log, last)
                    await _pause(stop, LEASE_EVERY_S)
        except psycopg.errors.UndefinedTable:
            return  # no leases in this version of the system
        except psycopg.Error:
            await _pause(stop, 0.5)


async def _sample_leases(
    conn: psycopg.AsyncConnection[tuple[object, ...]],
    log: RunLog,
    last: dict[str, tuple[str, int]],
) -> None:
    cur = await conn.execute(_LEASES)
    now = time.time()
    for role, holder, token, acquired in await cur.fetchall():
        seen = (str(holder), int(str(token)))
        if last.get(str(role)) != seen:
            last[str(role)] = seen
            log.leases.append(LeaseSample(now, str(role), seen[0], seen[1], float(str(acquired))))


async def watch_memory(redis_url: str, log: RunLog, stop: asyncio.Event) -> None:
    client = aredis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=1)
    try:
        while not stop.is_set():
            with contextlib.suppress(RedisError, OSError):
                info = await client.info("memory")
                log.memory.append(MemorySample(time.time(), int(info["used_memory"])))
            await _pause(stop, MEMORY_EVERY_S)
    finally:
        await client.aclose()


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
