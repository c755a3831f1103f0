"""The `command_results` table: where each command's outcome is settled, once.

- The executing attempt records its reply in the transaction of its effects (`record`).
- A caller that gave up waiting abandons its attempt (`abandon`) before answering 503: either the
  command already has an outcome (it is returned, and the caller answers it instead), or the
  attempt is marked so that its transaction, if it ever gets that far, records nothing and rolls
  back. Both write the same primary key, so PostgreSQL orders them: no 503 is ever followed by
  its command's effects.
- Every attempt reads the recorded outcome first (`stored`): a retry of a command id that took
  effect answers that outcome and never decides again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

Conn = psycopg.AsyncConnection[Any]
Recorded = tuple[str, str, bytes]  # (command id, attempt, reply)
Abandon = Callable[[str, str], Awaitable["Settled | None"]]

STORED = (
    "SELECT command_id, reply::text FROM command_results"
    " WHERE command_id = ANY(%s) AND reply IS NOT NULL"
)
_RECORD = (
    "INSERT INTO command_results (command_id, attempt, reply)"
    " SELECT * FROM unnest(%s::text[], %s::text[], %s::jsonb[])"
    " ON CONFLICT (command_id) DO UPDATE"
    " SET reply = excluded.reply, attempt = excluded.attempt, recorded_at = now()"
    " WHERE command_results.reply IS NULL"
    " AND excluded.attempt <> ALL (command_results.abandoned)"
    " RETURNING 1"
)
_ABANDON = (
    "INSERT INTO command_results (command_id, abandoned) VALUES (%s, ARRAY[%s])"
    " ON CONFLICT (command_id) DO UPDATE"
    " SET abandoned = command_results.abandoned || excluded.abandoned"
    " WHERE command_results.reply IS NULL"
    " RETURNING 1"
)
_RECORDED = "SELECT reply::text, attempt FROM command_results WHERE command_id = %s"
SETTLE_TIMEOUT_S = 3.0
SETTLE_BUDGET_S = 8.0  # the caller waits this much longer for a true answer


async def record(conn: Conn, outcomes: Sequence[Recorded]) -> bool:
    """Record each attempt's reply with its effects; False if any command already has an
    outcome or its attempt was abandoned (the transaction must then roll back)."""
    ids, attempts, replies = zip(*outcomes, strict=True)
    cur = await conn.execute(
        _RECORD, (list(ids), list(attempts), [r.decode() for r in replies]), prepare=True
    )
    return len(await cur.fetchall()) == len(outcomes)


async def stored(conn: Conn, command_ids: Sequence[str]) -> dict[str, bytes]:
    """The recorded replies of those of `command_ids` that took effect."""
    cur = await conn.execute(STORED, (list(command_ids),), prepare=True)
    return {row[0]: row[1].encode() for row in await cur.fetchall()}


@dataclass(frozen=True)
class Settled:
    """The outcome a command whose caller stopped waiting had: its reply, and whether an
    earlier attempt (not the caller's) recorded it."""

    reply: bytes
    earlier: bool


async def abandon(conn: Conn, command_id: str, attempt: str) -> Settled | None:
    """Settle a command whose caller stopped waiting: its recorded outcome if it took effect,
    else None, and then `attempt` can never take effect."""
    async with conn.transaction():
        timeout_ms = int(SETTLE_TIMEOUT_S * 1000)
        await conn.execute(f"SET LOCAL statement_timeout = {timeout_ms}")
        cur = await conn.execute(_ABANDON, (command_id, attempt))
        if await cur.fetchone() is not None:
            return None
        cur = await conn.execute(_RECORDED, (command_id,))
        row = await cur.fetchone()
        assert row is not None  # the row exists and holds a reply: the update was refused
        return Settled(row[0].encode(), earlier=row[1] != attempt)


def abandoner(pool: AsyncConnectionPool[Any], budget_s: float = SETTLE_BUDGET_S) -> Abandon:
    """`abandon` on a connection of `pool`, tried again on a connection that failed (a
    failover, a terminated backend) for up to `budget_s`."""

    async def run(command_id: str, attempt: str) -> Settled | None:
        deadline = time.monotonic() + budget_s
        while True:
            try:
                async with pool.connection(timeout=SETTLE_TIMEOUT_S) as conn:
                    return await abandon(conn, command_id, attempt)
            except (psycopg.OperationalError, PoolTimeout):
                if time.monotonic() + 0.2 >= deadline:
                    raise
            await asyncio.sleep(0.2)

    return run
