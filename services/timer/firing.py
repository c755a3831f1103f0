"""Firing claimed timers: each claimed batch is expired by a task of its own, up to a number of
lanes at once, so the firing loop goes back to claiming (and sleeping until the next due time)
while earlier batches commit.

A batch: one statement that decides and commits (expiry.py), its lateness observed from the
timer's clock (no query), then its timers released in Redis. On any failure the batch's leases
run out and it is claimed again, which is harmless: expiry acts only on an active, due
broadcast.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import structlog
from psycopg_pool import AsyncConnectionPool
from redis.exceptions import RedisError

from libs.events.clock import Clock
from services.timer.expiry import Outcome, expire, observe_lateness
from services.timer.store import TimerStore, due_ms

log = structlog.get_logger(__name__)
Timers = list[tuple[str, int]]  # (broadcast id, due ms)


class Lane:
    """A free lane, held while a claim is made; `fire` hands it the claimed batch."""

    def __init__(self, firing: Firing) -> None:
        self._firing = firing
        self.taken = False

    def fire(self, timers: Timers) -> None:
        if timers:
            self.taken = True
            self._firing.start(timers)


class Firing:
    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        store: TimerStore,
        clock: Clock,
        lanes: int,
        connect_s: float,
    ) -> None:
        self._pool, self._store, self._clock, self._connect_s = pool, store, clock, connect_s
        self._free = asyncio.Semaphore(lanes)
        self._tasks: set[asyncio.Task[None]] = set()

    @contextlib.asynccontextmanager
    async def lane(self) -> AsyncIterator[Lane]:
        """Wait for a free lane; it is given back at the end unless a batch took it."""
        await self._free.acquire()
        lane = Lane(self)
        try:
            yield lane
        finally:
            if not lane.taken:
                self._free.release()

    def start(self, timers: Timers) -> None:
        task = asyncio.create_task(self._fire(timers))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def busy(self) -> bool:
        """Whether a batch is being expired."""
        return bool(self._tasks)

    async def finish(self) -> None:
        """Wait for the batches in flight."""
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _fire(self, timers: Timers) -> None:
        """Expire the batch; its lane is free again once the statement answered, before the
        timers are released in Redis."""
        due = dict(timers)
        try:
            outcome = await expire(self._pool, list(due), self._clock, self._connect_s)
        except Exception as e:
            log.error("expiry_failed", timers=len(due), error=str(e))
            return
        finally:
            self._free.release()
        observe_lateness(due, outcome.expired, time.time())
        await self._release(outcome)

    async def _release(self, outcome: Outcome) -> None:
        """Remove the fired timers; put back those claimed before their time."""
        try:
            await self._store.done_many([*outcome.expired, *outcome.ended])
            for bid, expires_at in outcome.early.items():
                log.warning("timer_claimed_early", broadcast_id=bid)
                await self._store.put_back(bid, due_ms(expires_at))
        except (RedisError, OSError) as e:  # the leases run out; claimed again, no second effect
            log.warning("timer_release_failed", error=repr(e))
