"""Driver presence: heartbeats in Redis, and each driver's online flag and last sighting in
PostgreSQL (the `drivers` read model, written in the same transaction as the driver's events).

Heartbeats are a sorted set `<prefix>presence:heartbeats`: member = driver id, score = epoch
milliseconds of the driver's latest heartbeat. The gateway records them (`record_heartbeat`);
the presence service reads them to decide who timed out, and copies them to
`drivers.last_seen_at` so that losing Redis loses at most a few seconds of sightings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from redis.asyncio import Redis

Conn = psycopg.AsyncConnection[Any]


def heartbeats_key(prefix: str) -> str:
    return f"{prefix}presence:heartbeats"


async def record_heartbeat(redis: Redis, prefix: str, driver_id: str, now_ms: int) -> None:
    """Note that the driver was seen at `now_ms`; an earlier time never replaces a later one."""
    await redis.zadd(heartbeats_key(prefix), {driver_id: now_ms}, gt=True)


async def heartbeats(redis: Redis, prefix: str, driver_ids: Sequence[str]) -> list[datetime | None]:
    """The latest heartbeat of each driver, in order; None where Redis holds none."""
    if not driver_ids:
        return []
    scores = await redis.zmscore(heartbeats_key(prefix), list(driver_ids))
    return [None if s is None else from_ms(s) for s in scores]


async def forget_heartbeats_before(redis: Redis, prefix: str, before_ms: int) -> None:
    """Drop heartbeats too old to keep anybody online (unknown and offline drivers' too)."""
    await redis.zremrangebyscore(heartbeats_key(prefix), "-inf", f"({before_ms}")


def from_ms(ms: float) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def to_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


@dataclass(frozen=True)
class Presence:
    """A driver's availability as a writer needs it; `version` is of the `driver-<id>` stream."""

    driver_id: str
    transporter_id: str
    online: bool
    last_seen_at: datetime | None
    version: int


async def lock_presence(conn: Conn, driver_id: str) -> Presence | None:
    """Read a registered driver's presence and lock its row until the transaction ends."""
    cur = await conn.execute(
        "SELECT transporter_id, online, last_seen_at, presence_version FROM drivers"
        " WHERE driver_id = %s FOR UPDATE",
        (driver_id,),
        prepare=True,
    )
    row = await cur.fetchone()
    return Presence(driver_id, *row) if row else None


async def set_presence(
    conn: Conn, driver_id: str, *, online: bool, seen_at: datetime | None, version: int
) -> None:
    """Set the online flag and stream version; the last sighting only ever moves forward."""
    await conn.execute(
        "UPDATE drivers SET online = %s, last_seen_at = greatest(last_seen_at, %s),"
        " presence_version = %s WHERE driver_id = %s",
        (online, seen_at, version, driver_id),
        prepare=True,
    )


_STALE_ONLINE = """
SELECT driver_id, last_seen_at FROM drivers
WHERE online AND last_seen_at < %(before)s AND (last_seen_at, driver_id) > (%(at)s, %(id)s)
ORDER BY last_seen_at, driver_id LIMIT %(limit)s
"""


async def stale_online(
    conn: Conn, before: datetime, after: tuple[datetime, str] | None, limit: int
) -> list[tuple[str, datetime]]:
    """(driver id, last seen) of online drivers last seen before `before`, oldest first, from
    just after the `after` (last seen, driver id) of the previous page."""
    at, ident = after or (datetime.min.replace(tzinfo=UTC), "")
    params = {"before": before, "at": at, "id": ident, "limit": limit}
    cur = await conn.execute(_STALE_ONLINE, params, prepare=True)
    return [(r[0], r[1]) for r in await cur.fetchall()]


_PERSIST_SEEN = """
WITH seen AS (
    SELECT d.driver_id, x.at FROM drivers d
    JOIN unnest(%s::text[], %s::timestamptz[]) AS x(id, at) ON d.driver_id = x.id
    WHERE d.online AND d.last_seen_at < x.at
    ORDER BY d.driver_id FOR UPDATE OF d SKIP LOCKED
)
UPDATE drivers d SET last_seen_at = seen.at FROM seen WHERE d.driver_id = seen.driver_id
"""


async def persist_sightings(conn: Conn, seen: Sequence[tuple[str, datetime]]) -> None:
    """Move online drivers' `last_seen_at` forward to newer heartbeats, in one statement.

    Rows another transaction holds are skipped (the next sweep catches up), so concurrent
    sweepers never deadlock on each other.
    """
    if seen:
        ids, ats = [s[0] for s in seen], [s[1] for s in seen]
        await conn.execute(_PERSIST_SEEN, (ids, ats), prepare=True)
