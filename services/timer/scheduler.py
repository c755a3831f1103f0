"""The firing loop: sleep until the next timer is due, claim what is due, expire it.

It sleeps until the earliest due time (woken early when this instance schedules a nearer
timer), never longer than `max_sleep_s`, so it also notices timers other instances scheduled
and leases that ran out. Redis losing its data is noticed at the next claim and answered by a
rebuild from PostgreSQL before anything fires. PostgreSQL or Redis failing (a connection
terminated, a failover, a pool out of connections) does not end the loop: it pauses for
`retry_s` and goes on, so the timer process outlives the outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any

import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from redis.exceptions import RedisError

from libs.events.clock import Clock
from services.timer.expiry import expire, measure_lateness
from services.timer.reconcile import rebuild
from services.timer.store import RedisLostTimers, TimerStore, due_ms

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class SchedulerConfig:
    """`batch`: timers claimed and expired per transaction, small enough to commit well within
    `lease_ms`; `lanes`: such transactions run side by side (PostgreSQL does most of the work,
    on as many cores)."""

    lease_ms: int = 500
    batch: int = 1000
    lanes: int = 2
    max_sleep_s: float = 0.2
    rebuild_every_s: float = 3.0
    retry_s: float = 0.2  # the pause after PostgreSQL or Redis failed to answer
    # The longest a round waits for a pooled connection: past it a claimed batch's lease has
    # run out anyway, and a stop (or an outage) is noticed within it, not after the pool's 30 s.
    connect_s: float = 0.5


class Scheduler:
    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        store: TimerStore,
        clock: Clock,
        config: SchedulerConfig | None = None,
    ) -> None:
        self._pool, self._store, self._clock = pool, store, clock
        self._config = config or SchedulerConfig()
        self.wake = asyncio.Event()
        self.fired = 0

    async def run(self, stop: asyncio.Event) -> None:
        next_rebuild = 0.0
        while not stop.is_set():
            try:
                if time.monotonic() >= next_rebuild:
                    await rebuild(self._pool, self._store, self._config.connect_s)
                    next_rebuild = time.monotonic() + self._config.rebuild_every_s
                await self._fire_due()
                await self._sleep(stop)
            except RedisLostTimers:
                log.warning("timers_lost_rebuilding")
                next_rebuild = 0.0
            except (RedisError, OSError, psycopg.Error, PoolTimeout) as e:
                log.warning("timer_loop_interrupted", error=repr(e))
                await _pause(stop, self._config.retry_s)

    async def _fire_due(self) -> None:
        """Fire every due timer: `lanes` loops side by side, each claiming and expiring a batch
        until a claim comes back short. Each batch's lease starts at its own claim."""
        lanes = [asyncio.create_task(self._fire_lane()) for _ in range(self._config.lanes)]
        try:
            await asyncio.gather(*lanes)
        finally:  # one lane failed (Redis lost the timers, say): the others stop too
            for lane in lanes:
                lane.cancel()
            await asyncio.gather(*lanes, return_exceptions=True)

    async def _fire_lane(self) -> None:
        while claimed := await self._store.claim(
            _now_ms(), self._config.lease_ms, self._config.batch
        ):
            await self._fire(claimed)
            if len(claimed) < self._config.batch:
                return

    async def _fire(self, claimed: list[str]) -> None:
        """Expire a claimed batch; on failure the leases run out and it is claimed again."""
        try:
            outcome = await expire(self._pool, claimed, self._clock, self._config.connect_s)
        except Exception as e:
            log.error("expiry_failed", timers=len(claimed), error=str(e))
            return
        self.fired += len(outcome.expired)
        await self._store.done_many([*outcome.expired, *outcome.ended])
        if outcome.expired:
            with contextlib.suppress(psycopg.Error, PoolTimeout):
                await measure_lateness(self._pool, outcome.expired, self._config.connect_s)
        for bid, expires_at in outcome.early.items():
            log.warning("timer_claimed_early", broadcast_id=bid)
            await self._store.put_back(bid, due_ms(expires_at))

    async def _sleep(self, stop: asyncio.Event) -> None:
        next_due = await self._store.next_due_ms()
        delay = self._config.max_sleep_s
        if next_due is not None:
            delay = max(0.0, min(delay, (next_due - _now_ms()) / 1000))
        self.wake.clear()
        waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(self.wake.wait())]
        try:
            await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await w


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def _now_ms() -> int:
    return int(time.time() * 1000)
