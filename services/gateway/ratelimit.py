"""Rate limits every gateway instance shares: one bucket per key in Redis, checked and spent by
one atomic script (one round trip); while Redis is unreachable, an in-process bucket stands in.

The bucket is GCRA: the key holds the time at which the bucket will be full again, and expires
then, so Redis holds a key only for a caller seen within the last minute. The clock is Redis's
own (`TIME`), so gateways whose clocks differ still count alike.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.gateway.errors import ApiError

log = structlog.get_logger(__name__)

MAX_BUCKETS = 100_000
# How long a check may wait for Redis before the in-process bucket answers instead, and how
# long after a failure the in-process bucket keeps answering before Redis is asked again.
REDIS_BUDGET_S = 0.5
REDIS_RETRY_S = 5.0

# KEYS[1]: the bucket; ARGV: microseconds per request, burst in microseconds.
# Returns 0 when allowed (and spent), else the microseconds until the next request is.
GCRA = """
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000000 + tonumber(now[2])
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + interval
local wait = new_tat - now - tonumber(ARGV[2])
if wait > 0 then return wait end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat),
           'PX', math.ceil((new_tat - now) / 1000))
return 0
"""


def rate_limited(wait_s: float) -> ApiError:
    """429 `rate_limited`, with `Retry-After` in whole seconds (at least 1)."""
    retry_after = str(max(1, int(wait_s + 0.999)))
    return ApiError(429, "rate_limited", "Too many requests", headers={"Retry-After": retry_after})


class SharedLimiter:
    """`per_minute` requests a minute per key, with bursts up to the same number, counted in
    Redis under `key_prefix` for every gateway instance together."""

    def __init__(
        self,
        redis: Redis,
        key_prefix: str,
        per_minute: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._key_prefix = key_prefix
        self._interval_us = max(1, round(60_000_000 / per_minute))
        self._burst_us = self._interval_us * per_minute
        self._script = redis.register_script(GCRA)
        self._local = RateLimiter(per_minute, clock)
        self._clock = clock
        self._redis_back_at = 0.0

    async def take(self, key: str) -> float:
        """Spend one request of `key`: 0 if allowed, else the seconds until one is."""
        if self._clock() < self._redis_back_at:
            return self._local.take(key)
        args = (self._interval_us, self._burst_us)
        try:
            async with asyncio.timeout(REDIS_BUDGET_S):
                wait_us = await self._script(keys=[self._key_prefix + key], args=args)
        except (RedisError, OSError, TimeoutError) as e:
            self._fall_back(e)
            return self._local.take(key)
        return int(wait_us) / 1_000_000

    def _fall_back(self, error: Exception) -> None:
        """Count in this process for `REDIS_RETRY_S`; log once per outage, not per request."""
        now = self._clock()
        if now >= self._redis_back_at:
            log.warning(
                "rate_limit_in_process",
                key_prefix=self._key_prefix,
                error=repr(error),
                retry_s=REDIS_RETRY_S,
            )
        self._redis_back_at = now + REDIS_RETRY_S


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """In-process: `per_minute` requests a minute per caller, with bursts up to the same
    number. The shared limiter's stand-in while Redis is unreachable."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._capacity = float(per_minute)
        self._rate = per_minute / 60.0
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def take(self, caller: str) -> float:
        """Spend one token of `caller`: 0 if allowed, else the seconds until one is free."""
        now = self._clock()
        bucket = self._buckets.get(caller)
        if bucket is None:
            self._forget_full(now)
            bucket = self._buckets[caller] = _Bucket(self._capacity, now)
        bucket.tokens = min(self._capacity, bucket.tokens + (now - bucket.updated) * self._rate)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self._rate

    def _forget_full(self, now: float) -> None:
        """Drop buckets that have refilled completely (they hold no state) when too many."""
        if len(self._buckets) < MAX_BUCKETS:
            return
        refill_s = self._capacity / self._rate
        self._buckets = {k: b for k, b in self._buckets.items() if now - b.updated < refill_s}
