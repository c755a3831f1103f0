"""The heartbeat TTL sweep: every half second, turn offline the online drivers unseen for the TTL.

A driver's last sighting is the later of `drivers.last_seen_at` (its last request, or a
heartbeat copied there) and its heartbeat in Redis. Only drivers whose `last_seen_at` is older
than half the TTL are looked at (a partial index finds them); their newer heartbeats are copied
to PostgreSQL on the way, so a Redis wipe costs at most half a TTL of sightings, and a presence
restart costs nothing (the heartbeats wait in Redis). Any number of instances may sweep at once:
each offline transition is decided again under the driver's row lock (`TimeOut`).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis
from redis.exceptions import RedisError

from libs.events.clock import Clock
from libs.readmodel.presence import (
    forget_heartbeats_before,
    heartbeats,
    persist_sightings,
    stale_online,
    to_ms,
)
from services.presence.timeout import TimeOut, latest

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class SweepConfig:
    ttl_s: float
    every_s: float = 0.5
    page: int = 500
    parallel: int = 8
    # The longest the pass's own steps (reading a page, saving sightings) wait for a pooled
    # connection: a failed pass is retried at the next interval, and a stop (or an outage) is
    # noticed within it, not after the pool's 30 s. Turning drivers offline, `parallel` at a time
    # on a pool that may be smaller, queues for connections as long as the pool allows.
    connect_s: float = 1.0

    @property
    def interval_s(self) -> float:
        return min(self.every_s, self.ttl_s / 4)


class Sweeper:
    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        redis: Redis,
        prefix: str,
        config: SweepConfig,
        clock: Clock,
    ) -> None:
        self._pool, self._redis, self._prefix = pool, redis, prefix
        self._config, self._clock = config, clock
        self._time_out = TimeOut(pool, redis, prefix, timedelta(seconds=config.ttl_s), clock)
        self._limit = asyncio.Semaphore(config.parallel)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.sweep()
            except (RedisError, psycopg.Error, OSError) as e:
                log.warning("presence_sweep_interrupted", error=str(e))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._config.interval_s)

    async def sweep(self) -> int:
        """One pass over the online drivers not seen lately; how many turned offline."""
        now = self._clock()
        ttl = self._time_out.ttl
        await forget_heartbeats_before(self._redis, self._prefix, to_ms(now - 2 * ttl))
        after: tuple[datetime, str] | None = None
        offline = 0
        while True:
            async with self._pool.connection(timeout=self._config.connect_s) as conn:
                page = await stale_online(conn, now - ttl / 2, after, self._config.page)
            offline += await self._sweep_page(page, now)
            if len(page) < self._config.page:
                return offline
            after = (page[-1][1], page[-1][0])

    async def _sweep_page(self, page: list[tuple[str, datetime]], now: datetime) -> int:
        beats = await heartbeats(self._redis, self._prefix, [driver for driver, _ in page])
        newer = [(d, b) for (d, seen), b in zip(page, beats, strict=True) if b and b > seen]
        async with self._pool.connection(timeout=self._config.connect_s) as conn:
            await persist_sightings(conn, newer)
        late = [
            driver
            for (driver, seen), beat in zip(page, beats, strict=True)
            if self._time_out.expired(latest(seen, beat), now)
        ]
        turned = await asyncio.gather(*(self._turn_offline(driver) for driver in late))
        if late:
            log.info("drivers_timed_out", offline=sum(turned), candidates=len(late))
        return sum(turned)

    async def _turn_offline(self, driver_id: str) -> bool:
        async with self._limit:
            return await self._time_out(driver_id)
