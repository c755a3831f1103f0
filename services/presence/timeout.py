"""One driver timing out: online, but neither a request nor a heartbeat for the TTL.

The decision is taken again under the driver's row lock, with the heartbeat read again after
the lock is held: an online request that committed first, or a heartbeat recorded before that
read, keeps the driver online. Another sweeper that got there first left the driver offline,
so this one does nothing: one transition, one event.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from libs.events.clock import Clock
from libs.events.store import ConcurrencyConflict
from libs.readmodel.presence import Conn, heartbeats, lock_presence
from services.presence.availability import change_availability


def latest(*moments: datetime | None) -> datetime | None:
    known = [m for m in moments if m is not None]
    return max(known) if known else None


class TimeOut:
    """Turns drivers offline whose last sighting is older than the TTL."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        redis: Redis,
        prefix: str,
        ttl: timedelta,
        clock: Clock,
    ) -> None:
        self._pool, self._redis, self._prefix = pool, redis, prefix
        self.ttl, self._clock = ttl, clock

    def expired(self, last_seen: datetime | None, now: datetime) -> bool:
        return last_seen is None or now - last_seen > self.ttl

    async def __call__(self, driver_id: str) -> bool:
        """Turn the driver offline if it is still online and unseen for the TTL; True if so."""
        try:
            async with self._pool.connection() as conn, conn.transaction():
                return await self._time_out_in(conn, driver_id)
        except ConcurrencyConflict:
            return False  # someone else changed it first; the next sweep looks again

    async def _time_out_in(self, conn: Conn, driver_id: str) -> bool:
        row = await lock_presence(conn, driver_id)
        if row is None or not row.online:
            return False
        [beat] = await heartbeats(self._redis, self._prefix, [driver_id])
        seen = latest(row.last_seen_at, beat)
        if not self.expired(seen, self._clock()):
            return False
        await change_availability(conn, row, online=False, reason="heartbeat_timeout", seen_at=seen)
        return True
