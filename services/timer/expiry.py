"""Expiry of broadcasts at `expiresAt` (CONTRACT.md sections 4 and 8), many per transaction.

It locks the broadcasts' rows (in id order), so it queues with claims and cancels: an expiry
that commits first makes later claims `request_expired`; a broadcast filled or cancelled first
is left alone. Open slots expire; accepted slots keep their assignments.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from libs.events.catalogue import BroadcastExpired
from libs.events.store import ConcurrencyConflict, append_many
from libs.readmodel.broadcasts import ACTIVE_STATES, expire_broadcasts, lock_broadcasts
from libs.runtime.clock import Clock

Conn = psycopg.AsyncConnection[Any]
RETRIES = 5


@dataclass
class Outcome:
    """What a batch of expiries did: ids expired now, ids not yet due (with their time), and
    ids that had already ended (or never existed)."""

    expired: list[str] = field(default_factory=list)
    early: dict[str, datetime] = field(default_factory=dict)
    ended: list[str] = field(default_factory=list)


async def expire_in(conn: Conn, broadcast_ids: Sequence[str], clock: Clock) -> Outcome:
    """Expire every broadcast of `broadcast_ids` that is active and due, in this transaction."""
    rows = {r.broadcast_id: r for r in await lock_broadcasts(conn, broadcast_ids)}
    now, outcome = clock(), Outcome()
    for bid in broadcast_ids:
        row = rows.get(bid)
        if row is None or row.state not in ACTIVE_STATES:
            outcome.ended.append(bid)
        elif now < row.expires_at:
            outcome.early[bid] = row.expires_at
        else:
            outcome.expired.append(bid)
    if outcome.expired:
        await append_many(
            conn,
            [
                (
                    f"broadcast-{bid}",
                    rows[bid].version,
                    [BroadcastExpired(broadcast_id=bid, end_reason="timeout")],
                )
                for bid in outcome.expired
            ],
        )
        await expire_broadcasts(conn, outcome.expired, at=now)
    return outcome


async def expire(
    pool: AsyncConnectionPool[Any], broadcast_ids: Sequence[str], clock: Clock
) -> Outcome:
    """`expire_in` in its own transaction, retried on a write conflict."""
    for _ in range(RETRIES):
        try:
            async with pool.connection() as conn, conn.transaction():
                return await expire_in(conn, broadcast_ids, clock)
        except ConcurrencyConflict:
            continue
    raise ConcurrencyConflict("broadcast expiry batch", -1)
