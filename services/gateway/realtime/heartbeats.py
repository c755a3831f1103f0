"""Open driver sockets count as heartbeats (CONTRACT.md section 6).

A driver's first socket records one at once; then one `ZADD ... GT` covers every driver with a
socket on this gateway process, every third of `PRESENCE_TTL_SECONDS`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from libs.readmodel.presence import heartbeats_key, record_heartbeat

log = structlog.get_logger(__name__)

CHUNK = 1000


class SocketHeartbeats:
    def __init__(self, redis: Redis, prefix: str, ttl_s: float) -> None:
        self._redis, self._prefix, self._every = redis, prefix, ttl_s / 3
        self._drivers: Counter[str] = Counter()

    async def connected(self, driver_id: str) -> None:
        self._drivers[driver_id] += 1
        await record_heartbeat(self._redis, self._prefix, driver_id, int(time.time() * 1000))

    def disconnected(self, driver_id: str) -> None:
        self._drivers[driver_id] -= 1
        if self._drivers[driver_id] <= 0:
            del self._drivers[driver_id]

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._every)
            try:
                await self._beat()
            except (RedisError, OSError) as e:
                log.warning("socket_heartbeats_failed", error=str(e))

    async def _beat(self) -> None:
        drivers, now_ms = list(self._drivers), int(time.time() * 1000)
        for start in range(0, len(drivers), CHUNK):
            chunk = dict.fromkeys(drivers[start : start + CHUNK], now_ms)
            await self._redis.zadd(heartbeats_key(self._prefix), chunk, gt=True)
