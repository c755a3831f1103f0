"""The relay's queries: taking committed events off the outbox, its log of published batches,
and the events to publish again after Redis lost data."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

Conn = psycopg.AsyncConnection[Any]
Row = tuple[Any, ...]

# The relay's wake-up lock, a session advisory lock: the relay holds it while it sleeps, waiting
# for a notification, and leaves it free while it keeps looking at the outbox by itself. A
# writer's append takes it shared for its transaction if it is free, and notifies the relay at
# commit only if it is not (`store.py`): a `NOTIFY` holds a lock of the whole PostgreSQL cluster
# from before its commit until after the commit's WAL flush, so every notifying commit waits
# for the one before it to reach the disk, and under load that queue, not the work, bounded how
# many transactions committed per second. The relay sleeps only after it took the lock
# exclusively, which it can only while no writer holds it shared, and then looked at the outbox
# once more: every event committed by a writer that did not notify was in that look.
WAKE_LOCK = 0x7765_6C6F_0000_0001  # "welo", 1
WAKE_TRY = f"SELECT pg_try_advisory_lock({WAKE_LOCK})"
WAKE_FREE = f"SELECT pg_advisory_unlock({WAKE_LOCK})"

_COLUMNS = (
    "e.position, e.stream_id, e.event_id, e.version, e.recorded_at, e.correlation_id, e.data::text"
)
# Takes a batch off the outbox and logs it as batch `seq` of `epoch` in one statement (no log
# row when the outbox was empty): the caller's transaction commits the removal and the log
# together once the batch is published, or neither. One statement instead of two per batch: the
# relay's CPU goes mostly to the driver's work per statement, not to the rows.
# Both lookups go by primary key (`= ANY(array)`), whatever the planner believes about the
# tables' sizes: written as a join, the plan read all of `events` for every batch once the
# outbox's statistics said it was small (1-2 s a batch at 60,000 events, growing with them).
TAKE_AND_LOG = """
WITH taken AS (
    DELETE FROM outbox
    WHERE position = ANY(ARRAY(SELECT position FROM outbox ORDER BY position LIMIT %(limit)s))
    RETURNING position
), logged AS (
    INSERT INTO relay_log (epoch, seq, positions)
    SELECT %(epoch)s, %(seq)s, array_agg(position ORDER BY position) FROM taken
    HAVING count(*) > 0
)
SELECT e.position, e.stream_id, e.event_id, e.version, e.recorded_at, e.correlation_id,
       e.data::text
FROM events e
WHERE e.position = ANY(ARRAY(SELECT position FROM taken))
ORDER BY e.position
"""
# Published recently, that is: committed within the window and no longer in the outbox.
_RECENT = """
SELECT e.position, e.stream_id, e.event_id, e.version, e.recorded_at, e.correlation_id,
       e.data::text
FROM events e
WHERE e.recorded_at > now() - make_interval(secs => %s)
  AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.position = e.position)
ORDER BY e.position
"""
_AT = """
SELECT e.position, e.stream_id, e.event_id, e.version, e.recorded_at, e.correlation_id,
       e.data::text
FROM events e WHERE e.position = ANY(%s) ORDER BY e.position
"""
_LOG = "INSERT INTO relay_log (epoch, seq, positions) VALUES (%s, %s, %s)"
_LOGGED_AFTER = "SELECT seq, positions FROM relay_log WHERE epoch = %s AND seq > %s ORDER BY seq"
_BACKLOG = """
SELECT count(*), extract(epoch FROM now() - min(e.recorded_at))::float8
FROM outbox o JOIN events e ON e.position = o.position
"""
_FORGET = "DELETE FROM relay_log WHERE published_at < now() - make_interval(secs => %s)"


async def take_and_log(conn: Conn, limit: int, epoch: str, seq: int) -> list[Row]:
    """Up to `limit` of the outbox's oldest events, removed and logged as batch `seq` of
    `epoch` (in the caller's transaction)."""
    params = {"limit": limit, "epoch": epoch, "seq": seq}
    cur = await conn.execute(TAKE_AND_LOG, params, prepare=True)
    return await cur.fetchall()


async def wake_lock(conn: Conn, take: bool) -> psycopg.AsyncCursor[Row]:
    """Try to take the wake-up lock (`take`), or free it; in pipeline mode the answer (true if
    taken, or freed) comes with the next statement's."""
    return await conn.execute(WAKE_TRY if take else WAKE_FREE, prepare=True)


async def recent(conn: Conn, window_s: float) -> list[Row]:
    cur = await conn.execute(_RECENT, (window_s,))
    return await cur.fetchall()


async def at_positions(conn: Conn, positions: Sequence[int]) -> list[Row]:
    cur = await conn.execute(_AT, (list(positions),))
    return await cur.fetchall()


async def log_batch(conn: Conn, epoch: str, seq: int, rows: Sequence[Row]) -> None:
    await conn.execute(_LOG, (epoch, seq, [row[0] for row in rows]), prepare=True)


async def logged_after(conn: Conn, epoch: str, seq: int) -> list[tuple[int, list[int]]]:
    """The batches published in `epoch` after batch `seq`, in order: (seq, positions)."""
    cur = await conn.execute(_LOGGED_AFTER, (epoch, seq))
    return [(int(s), list(p)) for s, p in await cur.fetchall()]


async def forget_before(conn: Conn, age_s: float) -> None:
    await conn.execute(_FORGET, (age_s,))


async def backlog(conn: Conn) -> tuple[int, float | None]:
    """How many committed events wait in the outbox, and the oldest one's age in seconds."""
    cur = await conn.execute(_BACKLOG)
    row = await cur.fetchone()
    assert row is not None
    return int(row[0]), None if row[1] is None else float(row[1])
