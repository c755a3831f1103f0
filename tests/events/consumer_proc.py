"""A consumer process the runner tests kill: it applies one message and then hangs, unacked.

Usage: python -m tests.events.consumer_proc REDIS_URL DATABASE_URL STREAM GROUP MARKER PHASE
PHASE `after-commit` commits the effect before signalling; `before-commit` signals while the
effect's transaction is still open, so killing it then leaves no effect.
"""

from __future__ import annotations

import asyncio
import sys

import psycopg
from redis.asyncio import Redis

from libs.events.dispatch import envelope_of
from libs.events.runner import Delivery, RunnerConfig, StreamRunner
from libs.events.store import first_delivery


async def apply_effect(conn: psycopg.AsyncConnection, group: str, delivery: Delivery) -> None:
    envelope = envelope_of(delivery)
    if await first_delivery(conn, group, envelope.event_id):
        await conn.execute(
            "INSERT INTO bus_test_effects (event_id, entry_id) VALUES (%s, %s)",
            (envelope.event_id, delivery.entry_id),
        )


async def main(
    redis_url: str, database_url: str, stream: str, group: str, marker: str, phase: str
) -> None:
    redis = Redis.from_url(redis_url)
    conn = await psycopg.AsyncConnection.connect(database_url, autocommit=True)

    async def handle(delivery: Delivery) -> None:
        async with conn.transaction():
            await apply_effect(conn, group, delivery)
            if phase == "before-commit":
                await redis.set(marker, "1")
                await asyncio.Event().wait()
        await redis.set(marker, "1")
        await asyncio.Event().wait()

    runner = StreamRunner(
        redis,
        stream=stream,
        group=group,
        consumer="doomed",
        handler=handle,
        dead_letter=stream + ":dead",
        config=RunnerConfig(block_ms=100),
    )
    await runner.run(asyncio.Event())


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:7]))
