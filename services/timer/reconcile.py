"""Rebuilding the timer schedule from PostgreSQL, the source of truth.

`rebuild` schedules every active broadcast that has no timer (after a restart, a deploy or a
Redis wipe) and forgets timers whose broadcast has ended (a missed terminal event). It marks the
epoch first and reads Redis before PostgreSQL: Redis losing its data after the mark is noticed
by the next claim (which then asks for another rebuild), and a timer scheduled after Redis was
read is never forgotten by mistake.

One query answers both questions against the members Redis holds (sent as one binary array),
so a rebuild that finds the schedule right, as it nearly always does, moves no rows but the
members and writes nothing to Redis. It runs beside the firing loop, so it must not stop the
event loop for long: with 10,000 active broadcasts the old way (every active broadcast read and
sent back to Redis every 3 s) held up expiries due meanwhile.
"""

from __future__ import annotations

from typing import Any

import structlog
from psycopg_pool import AsyncConnectionPool

from libs.readmodel.states import UNENDED_SQL
from services.timer.store import TimerStore

log = structlog.get_logger(__name__)

# Active broadcasts without a timer (with their due ms), then timers whose broadcast ended
# (due ms NULL).
_DIFFERENCE = f"""
WITH held AS MATERIALIZED (SELECT unnest(%b::text[]) AS broadcast_id)
SELECT b.broadcast_id, ceil(extract(epoch FROM b.expires_at) * 1000)::bigint FROM broadcasts b
WHERE b.state IN {UNENDED_SQL}
  AND NOT EXISTS (SELECT 1 FROM held h WHERE h.broadcast_id = b.broadcast_id)
UNION ALL
SELECT h.broadcast_id, NULL FROM held h
WHERE NOT EXISTS (
    SELECT 1 FROM broadcasts b WHERE b.broadcast_id = h.broadcast_id
    AND b.state IN {UNENDED_SQL})
"""  # noqa: S608 (constants only)


async def rebuild(
    pool: AsyncConnectionPool[Any], store: TimerStore, connect_s: float
) -> tuple[int, int]:
    """Make the schedule match PostgreSQL, waiting at most `connect_s` for a connection;
    (timers added, timers forgotten)."""
    await store.mark_rebuilt()
    members = await store.members()
    async with pool.connection(timeout=connect_s) as conn:
        cur = await conn.execute(_DIFFERENCE, (members,), prepare=True)
        rows = await cur.fetchall()
    missing = [(r[0], int(r[1])) for r in rows if r[1] is not None]
    ended = [r[0] for r in rows if r[1] is None]
    added = await store.schedule(missing)
    await store.forget(ended)
    if added or ended:
        log.info("timers_reconciled", added=added, forgotten=len(ended), held=len(members))
    return added, len(ended)
