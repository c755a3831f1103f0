"""Ending transactions whose client went silent in pipeline mode.

PostgreSQL ends a transaction left idle for `IDLE_IN_TRANSACTION_MS` (`postgres.py`), but only
once its client sent a Sync: a client in pipeline mode (psycopg's `conn.pipeline()`, which the
batched command executor and the claims use) that stops talking between two statements leaves
its backend `active`, waiting for the next message (`wait_event` `ClientRead`), with no timeout
at all. A process frozen there (SIGSTOP, a stalled VM) keeps the transaction's row locks for as
long as it is frozen: a claim frozen mid-pipeline held a broadcast's row, and with it the timer's
expiry of that broadcast, for the whole 15 s freeze (the chaos soak of 2026-12-02 01:41, seed
749262).

So every service process watches the database's service connections (`weelo-*`): a backend in
a transaction that has waited on its client, with no new message (`state_change` unchanged),
for `IDLE_IN_TRANSACTION_MS` is terminated, as PostgreSQL would have done after a Sync. A
healthy pipeline sends its next statement within milliseconds; a frozen process cannot watch,
but every other process does.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import datetime
from typing import Any

import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from libs.runtime.postgres import IDLE_IN_TRANSACTION_MS

log = structlog.get_logger(__name__)

POLL_S = 0.2
SILENT_S = IDLE_IN_TRANSACTION_MS / 1000

_WAITING_ON_CLIENT = """SELECT pid, state_change, application_name FROM pg_stat_activity
    WHERE datname = current_database() AND pid <> pg_backend_pid()
      AND application_name LIKE 'weelo-%%' AND state = 'active'
      AND wait_event = 'ClientRead' AND xact_start IS NOT NULL"""

Seen = dict[tuple[int, datetime], float]  # (pid, state_change) → when first seen silent


async def end_silent(conn: psycopg.AsyncConnection[Any], seen: Seen, now: float) -> list[str]:
    """Terminate the backends seen waiting on their client, with the same `state_change`, for
    `SILENT_S`; keep the rest in `seen`. The names of the connections ended."""
    cur = await conn.execute(_WAITING_ON_CLIENT)
    current = {(int(pid), changed): str(name) for pid, changed, name in await cur.fetchall()}
    for key in list(seen):
        if key not in current:
            del seen[key]  # it spoke again, finished, or is gone
    ended = []
    for key, name in current.items():
        first = seen.setdefault(key, now)
        if now - first >= SILENT_S:
            await conn.execute("SELECT pg_terminate_backend(%s)", (key[0],))
            del seen[key]
            ended.append(name)
    return ended


async def end_silent_forever(pool: AsyncConnectionPool[Any], stop: asyncio.Event) -> None:
    """`end_silent` every `POLL_S` until `stop`; a database that does not answer is skipped."""
    seen: Seen = {}
    while not stop.is_set():
        try:
            async with pool.connection(timeout=POLL_S) as conn:
                for name in await end_silent(conn, seen, time.monotonic()):
                    log.warning("silent_transaction_ended", connection=name, after_s=SILENT_S)
        except (psycopg.Error, PoolTimeout) as e:
            log.debug("silent_transaction_check_failed", error=str(e))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), POLL_S)
