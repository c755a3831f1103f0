"""One leader at a time among every process that runs the same work (a PostgreSQL advisory
lock held by a connection of the leader): the others stand by and take over within about
`retry_s` of the leader's connection closing (a crash or a kill closes it at once)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import structlog

log = structlog.get_logger(__name__)

Work = Callable[[asyncio.Event], Awaitable[None]]


async def lead_forever(
    database_url: str,
    lock_name: str,
    work: Work,
    stop: asyncio.Event,
    *,
    retry_s: float = 0.5,
    check_s: float = 1.0,
) -> None:
    """Run `work(until)` while this process holds the lock; `until` is set when it must stop
    (`stop` was set or the lock's connection failed). A process standing by keeps its one
    connection and asks for the lock again every `retry_s`."""
    while not stop.is_set():
        try:
            async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
                while not stop.is_set():
                    if await _try_lock(conn, lock_name):
                        log.info("leading", lock=lock_name)
                        await _lead(conn, work, stop, check_s)
                        break  # the lock's connection failed or we stop: start afresh
                    await _wait(stop, retry_s)
        except (psycopg.Error, OSError) as e:
            log.warning("leadership_interrupted", lock=lock_name, error=str(e))
        except Exception as e:  # the work failed: give up the lead, take it again afresh
            log.exception("leader_work_failed", lock=lock_name, error=str(e))
        await _wait(stop, retry_s)


async def _try_lock(conn: psycopg.AsyncConnection[Any], name: str) -> bool:
    cur = await conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (name,))
    row = await cur.fetchone()
    return bool(row and row[0])


async def _lead(
    conn: psycopg.AsyncConnection[Any], work: Work, stop: asyncio.Event, check_s: float
) -> None:
    until = asyncio.Event()
    watching = asyncio.create_task(_watch(conn, stop, until, check_s))
    try:
        await work(until)
    finally:
        until.set()
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching


async def _watch(
    conn: psycopg.AsyncConnection[Any], stop: asyncio.Event, until: asyncio.Event, check_s: float
) -> None:
    """Set `until` on `stop`, or as soon as the lock's connection stops answering."""
    try:
        while not stop.is_set():
            await _wait(stop, check_s)
            async with asyncio.timeout(check_s * 5):
                await conn.execute("SELECT 1")
    except (psycopg.Error, OSError) as e:  # OSError covers TimeoutError
        log.warning("leadership_lost", error=str(e))
    finally:
        until.set()


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
