"""Expiry of a broadcast at `expiresAt` (CONTRACT.md sections 4 and 8).

It locks the broadcast's row, so it queues with claims and cancels: an expiry that commits first
makes later claims `request_expired`; a broadcast filled or cancelled first is left alone.
Open slots expire; accepted slots keep their assignments.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from libs.events.catalogue import BroadcastExpired
from libs.events.store import ConcurrencyConflict, append
from libs.readmodel.broadcasts import (
    ACTIVE_STATES,
    change_state,
    close_truck_requests,
    lock_broadcast,
)
from libs.runtime.clock import Clock

Conn = psycopg.AsyncConnection[Any]
RETRIES = 5


class TooEarly(Exception):
    """The broadcast's `expiresAt` has not been reached: nothing was done."""

    def __init__(self, broadcast_id: str, expires_at: datetime) -> None:
        super().__init__(f"{broadcast_id} expires at {expires_at.isoformat()}")
        self.expires_at = expires_at


async def expire_in(conn: Conn, broadcast_id: str, clock: Clock) -> bool:
    """Expire an active broadcast whose time has come; False if it had already ended."""
    row = await lock_broadcast(conn, broadcast_id)
    if row is None or row.state not in ACTIVE_STATES:
        return False
    now = clock()
    if now < row.expires_at:
        raise TooEarly(broadcast_id, row.expires_at)
    await append(
        conn,
        f"broadcast-{broadcast_id}",
        row.version,
        [BroadcastExpired(broadcast_id=broadcast_id, end_reason="timeout")],
    )
    await change_state(
        conn, broadcast_id, "expired", at=now, version=row.version + 1, end_reason="timeout"
    )
    await close_truck_requests(conn, broadcast_id, ("open",), "expired")
    return True


async def expire(pool: AsyncConnectionPool[Any], broadcast_id: str, clock: Clock) -> bool:
    """`expire_in` in its own transaction, retried on a write conflict."""
    for _ in range(RETRIES):
        try:
            async with pool.connection() as conn, conn.transaction():
                return await expire_in(conn, broadcast_id, clock)
        except ConcurrencyConflict:
            continue
    raise ConcurrencyConflict(f"broadcast-{broadcast_id}", -1)
