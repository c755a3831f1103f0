"""Rebuilding the timer schedule from PostgreSQL, the source of truth.

`rebuild` schedules every active broadcast that has no timer (after a restart, a deploy or a
Redis wipe) and forgets timers whose broadcast has ended (a missed terminal event). Reading Redis
before PostgreSQL keeps a timer scheduled in between from being forgotten by mistake.
"""

from __future__ import annotations

from typing import Any

import structlog
from psycopg_pool import AsyncConnectionPool

from libs.readmodel.states import UNENDED_SQL
from services.timer.store import TimerStore

log = structlog.get_logger(__name__)

_ACTIVE = f"""
SELECT broadcast_id, ceil(extract(epoch FROM expires_at) * 1000)::bigint FROM broadcasts
WHERE state IN {UNENDED_SQL}
"""  # noqa: S608 (constants only)
_ENDED = f"""
SELECT m FROM unnest(%s::text[]) AS m
WHERE NOT EXISTS (
    SELECT 1 FROM broadcasts b WHERE b.broadcast_id = m
    AND b.state IN {UNENDED_SQL})
"""  # noqa: S608 (constants only)


async def rebuild(
    pool: AsyncConnectionPool[Any], store: TimerStore, connect_s: float
) -> tuple[int, int]:
    """Make the schedule match PostgreSQL, waiting at most `connect_s` for a connection;
    (timers added, timers forgotten)."""
    members = await store.members()
    async with pool.connection(timeout=connect_s) as conn:
        active = [(r[0], int(r[1])) for r in await (await conn.execute(_ACTIVE)).fetchall()]
        ended = [r[0] for r in await (await conn.execute(_ENDED, (members,))).fetchall()]
    added = await store.schedule(active)
    await store.forget(ended)
    await store.mark_rebuilt()
    if added or ended:
        log.info("timers_reconciled", added=added, forgotten=len(ended), active=len(active))
    return added, len(ended)
