"""Pruning of bookkeeping rows that only matter for a while: replies of executed commands,
consumer dedupe records and `Idempotency-Key` records (kept `RETENTION` long, one day).

Every service process runs it; concurrent deletes of the same rows are harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from typing import Any

import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool

log = structlog.get_logger(__name__)

RETENTION = timedelta(days=1)
INTERVAL_S = 600.0
CONNECT_S = 1.0  # a busy or absent PostgreSQL fails this round; the next comes in INTERVAL_S
PRUNED = {
    "command_results": "recorded_at",
    "processed_events": "processed_at",
    "idempotency_keys": "created_at",
    "projected_events": "projected_at",
}


async def prune(pool: AsyncConnectionPool[Any], retention: timedelta = RETENTION) -> dict[str, int]:
    """Delete rows older than `retention`; how many went from each table."""
    removed = {}
    async with pool.connection(timeout=CONNECT_S) as conn:
        for table, column in PRUNED.items():
            cur = await conn.execute(
                f"DELETE FROM {table} WHERE {column} < now() - %s",  # noqa: S608
                (retention,),
            )
            removed[table] = cur.rowcount
    return removed


async def prune_forever(pool: AsyncConnectionPool[Any], stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), INTERVAL_S)
        if stop.is_set():
            return
        try:
            removed = await prune(pool)
        except psycopg.Error as e:
            log.warning("prune_failed", error=str(e))
            continue
        if any(removed.values()):
            log.info("bookkeeping_pruned", **removed)
