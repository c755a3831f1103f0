"""The timer service on one screen: which broadcast event schedules or forgets which timer.

The timer service owns every piece of Redis state that names a broadcast (its timer), so the
one cleanup path for every terminal state is `forget` here: a broadcast that is fully filled,
cancelled or expired leaves no Redis key or set member behind.
"""

from __future__ import annotations

from libs.events.catalogue import (
    BroadcastCancelled,
    BroadcastCreated,
    BroadcastExpired,
    BroadcastFilled,
)
from libs.events.dispatch import EventHandlers
from services.timer.deps import TimerDeps
from services.timer.store import due_ms


async def schedule(deps: TimerDeps, event: BroadcastCreated) -> None:
    """A new broadcast gets a timer at its `expiresAt`, unless it has one already (a rebuild
    scheduled it) or has already ended.

    Redis is asked first: after a restart with a backlog the rebuild has scheduled every active
    broadcast, so their events cost no query, and one whose timer already fired is not scheduled
    again (PostgreSQL, asked in batches, says it ended)."""
    if await deps.store.holds(event.broadcast_id):
        return
    if await deps.active(event.broadcast_id):
        await deps.store.schedule([(event.broadcast_id, due_ms(event.expires_at))])
        deps.wake.set()


async def forget(
    deps: TimerDeps, event: BroadcastFilled | BroadcastCancelled | BroadcastExpired
) -> None:
    """A broadcast that ended loses its timer: no Redis state names it any more."""
    await deps.store.forget([event.broadcast_id])


HANDLERS = (
    EventHandlers[TimerDeps]()
    .on(BroadcastCreated, schedule)
    .on(BroadcastFilled, forget)
    .on(BroadcastCancelled, forget)
    .on(BroadcastExpired, forget)
)
