"""The timer service on one screen: which broadcast event schedules or forgets which timer.

The timer service owns every piece of Redis state that names a broadcast (its timer), so the
one cleanup path for every terminal state is `forget` here: a broadcast that is fully filled,
cancelled or expired leaves no Redis key or set member behind.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from libs.events.catalogue import (
    BroadcastCancelled,
    BroadcastCreated,
    BroadcastExpired,
    BroadcastFilled,
    Envelope,
    Event,
)
from libs.events.dispatch import EventHandler
from services.timer.store import TimerStore, due_ms


@dataclass(frozen=True)
class TimerDeps:
    active: Callable[[str], Awaitable[bool]]  # whether a broadcast is still active (active.py)
    store: TimerStore
    wake: Any  # asyncio.Event of the firing loop


async def schedule(deps: TimerDeps, envelope: Envelope) -> None:
    """A new broadcast gets a timer at its `expiresAt`, unless it has one already (a rebuild
    scheduled it) or has already ended.

    Redis is asked first: after a restart with a backlog the rebuild has scheduled every active
    broadcast, so their events cost no query, and one whose timer already fired is not scheduled
    again (PostgreSQL, asked in batches, says it ended)."""
    event = envelope.event
    assert isinstance(event, BroadcastCreated)
    if await deps.store.holds(event.broadcast_id):
        return
    if await deps.active(event.broadcast_id):
        await deps.store.schedule([(event.broadcast_id, due_ms(event.expires_at))])
        deps.wake.set()


async def forget(deps: TimerDeps, envelope: Envelope) -> None:
    """A broadcast that ended loses its timer: no Redis state names it any more."""
    event = envelope.event
    assert isinstance(event, BroadcastFilled | BroadcastCancelled | BroadcastExpired)
    await deps.store.forget([event.broadcast_id])


HANDLERS: dict[type[Event], Any] = {
    BroadcastCreated: schedule,
    BroadcastFilled: forget,
    BroadcastCancelled: forget,
    BroadcastExpired: forget,
}


def bind(deps: TimerDeps) -> dict[type[Event], EventHandler]:
    return {kind: _bound(fn, deps) for kind, fn in HANDLERS.items()}


def _bound(fn: Any, deps: TimerDeps) -> EventHandler:
    async def handler(envelope: Envelope) -> None:
        await fn(deps, envelope)

    return handler
