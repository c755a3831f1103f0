"""Retrying failed entries: growing pauses, and when each entry first failed.

An entry whose handling failed stays pending in its group. The runner's reclaim runs it again
once it has been idle for the pause after its last delivery: `first_s`, doubled after each
further failed delivery, at most `max_s`. It goes to the dead-letter stream only once it was
delivered `max_deliveries` times and its first failure is `window_s` old (`exhausted`).

The first failure and the last error of each entry being retried are kept in Redis, one hash per
stream and group (`failures_key`; field: the entry id, value: `<first failure ms> <delivery that
failed> <error>`, the time by Redis's clock), so the window counts from the first failure
whichever consumer failed it and across restarts. A field goes when its entry is acknowledged;
the trimmer removes any left behind by a crash (`prune`). If Redis lost a record the window
starts again: an entry is never dead-lettered early.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from libs.events.streams import StreamId, parse_id

# Keeps the first failure time of a field already there; answers it.
_RECORD = """
local now = redis.call('TIME')
local first = tostring(now[1] * 1000 + math.floor(now[2] / 1000))
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then first = string.match(old, '^%d+') or first end
redis.call('HSET', KEYS[1], ARGV[1], first .. ' ' .. ARGV[2] .. ' ' .. ARGV[3])
return first
"""


def pause_s(deliveries: int, first_s: float, max_s: float) -> float:
    """The pause before the next attempt at an entry delivered `deliveries` times."""
    return float(min(first_s * 2 ** max(deliveries - 1, 0), max_s))


def failures_key(stream: str, group: str) -> str:
    return f"{stream}:failures:{group}"


@dataclass(frozen=True)
class Failure:
    first_ms: int
    deliveries: int  # the delivery that failed last: a later one is running, or was lost
    error: str


@dataclass(frozen=True)
class RetryPolicy:
    claim_idle_ms: int  # an entry pending this long on a consumer that is not done with it
    first_pause_s: float
    max_pause_s: float
    window_s: float
    max_deliveries: int

    def least_wait_ms(self) -> int:
        return min(self.claim_idle_ms, int(self.first_pause_s * 1000))

    def wait_ms(self, failure: Failure | None, deliveries: int) -> int:
        """How long an entry delivered `deliveries` times stays pending before it is claimed:
        its pause when its last delivery failed, else `claim_idle_ms` (its consumer may still be
        at it, or died)."""
        if failure is None or failure.deliveries < deliveries:
            return self.claim_idle_ms
        return int(pause_s(deliveries, self.first_pause_s, self.max_pause_s) * 1000)

    def exhausted(self, failure: Failure, deliveries: int, now_ms: int) -> bool:
        """Whether an entry was tried often enough for long enough to be dead-lettered."""
        return (
            deliveries >= self.max_deliveries and now_ms - failure.first_ms >= self.window_s * 1000
        )


class Failures:
    """The failures of one group's entries on one stream."""

    def __init__(self, redis: Redis, stream: str, group: str) -> None:
        self._redis = redis
        self.key = failures_key(stream, group)
        self._record = redis.register_script(_RECORD)

    async def record(self, entry_id: str, deliveries: int, error: str) -> int:
        """Note that delivery `deliveries` of `entry_id` failed; the time of its first failure
        (ms since the epoch)."""
        first: Any = await self._record(keys=[self.key], args=[entry_id, deliveries, error[:2000]])
        return int(first)

    async def read(self, entry_ids: Sequence[str]) -> dict[str, Failure]:
        if not entry_ids:
            return {}
        values: Any = await self._redis.hmget(self.key, list(entry_ids))
        return {
            entry: _parse(value) for entry, value in zip(entry_ids, values, strict=True) if value
        }

    async def forget(self, entry_ids: Sequence[str]) -> None:
        if entry_ids:
            await self._redis.hdel(self.key, *entry_ids)

    async def entries(self) -> list[str]:
        found: Any = await self._redis.hkeys(self.key)
        return [_text(entry) for entry in found]

    async def prune(self, floor: StreamId) -> int:
        """Remove the records of entries below `floor` (none of them is pending any more)."""
        stale = [e for e in await self.entries() if parse_id(e) < floor]
        await self.forget(stale)
        return len(stale)


Due = dict[str, tuple[int, int, Failure | None]]


async def due(
    redis: Redis,
    stream: str,
    group: str,
    *,
    policy: RetryPolicy,
    failures: Failures,
    skip: Collection[str],
    count: int,
) -> Due:
    """The group's pending entries, except those in `skip` (in hand here), whose pause (or
    `claim_idle_ms`) has passed: for each, its deliveries so far, the idle time it needed and
    its failure record."""
    pending: Any = await redis.xpending_range(
        stream, group, "-", "+", count + len(skip), idle=policy.least_wait_ms()
    )
    found = [p for p in pending if _text(p["message_id"]) not in skip]
    known = await failures.read([_text(p["message_id"]) for p in found])
    ready: Due = {}
    for p in found:
        entry_id, deliveries = _text(p["message_id"]), int(p["times_delivered"])
        wait = policy.wait_ms(known.get(entry_id), deliveries)
        if int(p["time_since_delivered"]) >= wait:
            ready[entry_id] = (deliveries, wait, known.get(entry_id))
    return ready


def _parse(value: bytes | str) -> Failure:
    first, deliveries, error = _text(value).split(" ", 2)
    return Failure(int(first), int(deliveries), error)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
