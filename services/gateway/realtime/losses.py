"""Clients told when Redis lost data (contract section 8): a connected client either receives
every message meant for it or `resync_required`.

When Redis loses data (all of it, or only its newest writes), the relay publishes the events
again and the projector delivers their messages again, but an inbox entry that was lost before a
socket read it is gone, and one it did read may come again. The relay marks each such loss in
`{bus}:losses`; every gateway checks the mark every second and, when it changes, sends
`resync_required` to every socket it holds: the client reloads its state over HTTP. Frames after
it may repeat what the reload already shows.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from libs.events.streams import is_first_mark

log = structlog.get_logger(__name__)

CHECK_S = 1.0
_UNREAD = "no read yet"  # a value no mark takes (marks are uuid hex)


async def watch_losses(
    redis: Redis,
    key: str,
    on_loss: Callable[[], int],
    stop: asyncio.Event,
    every_s: float = CHECK_S,
) -> None:
    """Call `on_loss` whenever a mark at `key` differs from the last one seen, or appears where
    the first read found none (a wipe may have come before this watcher saw the relay's first
    mark), unless it is the deployment's first mark (`is_first_mark`: Redis held nothing of it
    before). The mark found at the first read is no loss; a mark gone (a wipe the relay has not
    noticed yet) keeps the one seen before, so the relay's next is a loss."""
    seen: bytes | str | None = _UNREAD
    failing = False
    while not stop.is_set():
        try:
            mark = await redis.get(key)
        except (RedisError, OSError) as e:
            if not failing:  # once per outage: a watcher that cannot read hears of no loss
                log.warning("loss_mark_unreadable", error=repr(e))
            failing = True
        else:
            failing = False
            if _is_loss(seen, mark):
                told = on_loss()
                log.warning("redis_lost_data_clients_resync", sockets=told)
            if mark is not None or seen is _UNREAD:
                seen = mark
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)


def _is_loss(seen: bytes | str | None, mark: bytes | str | None) -> bool:
    if mark is None or seen is _UNREAD or mark == seen:
        return False
    return not (seen is None and is_first_mark(mark))
