"""The firing loop: sleep until the next timer is due, claim what is due, expire it.

Nothing but claiming and sleeping is on the loop's own path. One claim (one Redis round trip)
takes what is due and answers the earliest due time left; each claimed batch is expired by a
task of its own (`Firing`), up to `lanes` side by side, so a timer falling due while earlier
ones commit is claimed on time rather than after them. The loop then sleeps until exactly that
due time (woken early when this instance schedules a nearer timer), never longer than
`max_sleep_s`, so it also notices timers other instances scheduled and leases that ran out.

The periodic rebuild from PostgreSQL runs beside the loop, not in it. Redis losing its data is
noticed at the next claim and answered by a rebuild before anything else is claimed. PostgreSQL
or Redis failing (a connection terminated, a failover, a pool out of connections) does not end
the loop: it pauses for `retry_s` and goes on, so the timer process outlives the outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from redis.exceptions import RedisError

from libs.events.clock import Clock
from services.timer.firing import Firing
from services.timer.gaps import GapHeap, HeapInGaps
from services.timer.reconcile import rebuild
from services.timer.store import RedisLostTimers, TimerStore

log = structlog.get_logger(__name__)
OUTAGES = (RedisError, OSError, psycopg.Error, PoolTimeout)


@dataclass(frozen=True)
class SchedulerConfig:
    """`batch`: timers claimed and expired per transaction, small enough to commit well within
    `lease_ms`; `lanes`: such transactions in flight at once (PostgreSQL commits them side by
    side; each holds a pooled connection, so fewer than the pool's)."""

    lease_ms: int = 500
    batch: int = 1000
    lanes: int = 4
    max_sleep_s: float = 0.2
    rebuild_every_s: float = 3.0
    retry_s: float = 0.2  # the pause after PostgreSQL or Redis failed to answer
    # The longest a batch waits for a pooled connection: past it its lease has run out anyway,
    # and a stop (or an outage) is noticed within it, not after the pool's 30 s.
    connect_s: float = 0.5
    heap: GapHeap = field(default_factory=GapHeap)


class Scheduler:
    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        store: TimerStore,
        clock: Clock,
        config: SchedulerConfig | None = None,
    ) -> None:
        self._pool, self._store = pool, store
        self._config = config = config or SchedulerConfig()
        self._firing = Firing(pool, store, clock, config.lanes, config.connect_s)
        self._heap = HeapInGaps(config.heap)
        self.wake = asyncio.Event()
        self._next_due_ms: int | None = None
        self._rebuilding: asyncio.Task[tuple[int, int]] | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Fire timers until `stop`; then let the batches in flight finish."""
        watch = asyncio.create_task(stop.wait())
        watch.add_done_callback(lambda _: self.wake.set())
        try:
            await self._loop(stop)
        finally:
            watch.cancel()
            if self._rebuilding is not None:
                self._rebuilding.cancel()
            await self._firing.finish()

    async def _loop(self, stop: asyncio.Event) -> None:
        rebuilt, next_rebuild = False, 0.0
        while not stop.is_set():
            try:
                if not rebuilt:  # at start, and after Redis lost the timers: before any claim
                    await rebuild(self._pool, self._store, self._config.connect_s)
                    rebuilt, next_rebuild = True, time.monotonic() + self._config.rebuild_every_s
                elif time.monotonic() >= next_rebuild and self._rebuilding is None:
                    self._rebuild_beside()
                    next_rebuild = time.monotonic() + self._config.rebuild_every_s
                await self._fire_due()
                await self._sleep(stop)
            except RedisLostTimers:
                log.warning("timers_lost_rebuilding")
                rebuilt = False
            except OUTAGES as e:
                log.warning("timer_loop_interrupted", error=repr(e))
                await _pause(stop, self._config.retry_s)

    def _rebuild_beside(self) -> None:
        self._rebuilding = asyncio.create_task(
            rebuild(self._pool, self._store, self._config.connect_s)
        )
        self._rebuilding.add_done_callback(self._rebuild_ended)

    def _rebuild_ended(self, task: asyncio.Task[Any]) -> None:
        self._rebuilding = None
        if not task.cancelled() and task.exception() is not None:
            log.warning("timer_rebuild_failed", error=repr(task.exception()))

    async def _fire_due(self) -> None:
        """Claim every due timer, a batch at a time, each handed to a firing lane; a claim
        waits for a free lane, so a batch's lease starts when its transaction can. A timer
        scheduled here from now on wakes the sleep that follows."""
        self.wake.clear()
        while True:
            async with self._firing.lane() as lane:
                claim = await self._store.claim_due(
                    _now_ms(), self._config.lease_ms, self._config.batch
                )
                lane.fire(claim.timers)
            self._next_due_ms = claim.next_due_ms
            if len(claim.timers) < self._config.batch:
                return

    async def _sleep(self, stop: asyncio.Event) -> None:
        """Until the next due time (as the last claim told), a nearer timer scheduled here, or
        `stop`; at most `max_sleep_s`. A gap long enough tends the heap first (gaps.py)."""
        self.wake.clear()
        if stop.is_set():
            return
        if self._heap.tend(self._delay(), self._firing.busy()):
            return  # it took a while: claim again before sleeping
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._delay()):
                await self.wake.wait()

    def _delay(self) -> float:
        delay = self._config.max_sleep_s
        if self._next_due_ms is not None:
            delay = min(delay, self._next_due_ms / 1000 - time.time())
        return max(0.0, delay)


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def _now_ms() -> int:
    return int(time.time() * 1000)
