"""Durable timers in Redis: a sorted set of due times and a sorted set of leases.

- `due`: member = broadcast id, score = when it expires (epoch ms).
- `inflight`: members claimed by a firing instance, score = when its lease runs out. A claim
  moves members from `due` (and expired leases) to `inflight` in one Lua script, so exactly one
  instance holds each; the holder removes it once the expiry committed. If the holder dies, the
  lease runs out and another instance claims it again: nothing is lost, and firing twice is
  harmless because expiry only acts on an active broadcast. The same script answers the
  earliest due time or lease end left, so one round trip claims and tells when to wake.
- `epoch`: set by every rebuild from PostgreSQL before it reads the schedule. A claim answers
  "lost" when it is gone (Redis lost its data), and the timer service rebuilds at once.

All three keys share the hash tag `{timers}`, so the scripts run on Redis Cluster too.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from redis.asyncio import Redis

from libs.events.batching import Batcher

_CLAIM = """
if redis.call('EXISTS', KEYS[3]) == 0 then return {0} end
local now, lease, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local out, held = {1, -1}, {}
local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'WITHSCORES', 'LIMIT', 0, limit)
for i = 1, #stale, 2 do
  table.insert(out, stale[i]); table.insert(out, tonumber(stale[i + 1]) - tonumber(ARGV[4]))
  table.insert(held, lease); table.insert(held, stale[i])
end
local room = limit - #stale / 2
if room > 0 then
  local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, room)
  local taken = {}
  for i = 1, #due, 2 do
    table.insert(out, due[i]); table.insert(out, tonumber(due[i + 1]))
    table.insert(held, lease); table.insert(held, due[i]); table.insert(taken, due[i])
  end
  if #taken > 0 then redis.call('ZREM', KEYS[1], unpack(taken)) end
end
if #held > 0 then redis.call('ZADD', KEYS[2], unpack(held)) end
for k = 1, 2 do
  local first = redis.call('ZRANGE', KEYS[k], 0, 0, 'WITHSCORES')
  if first[2] and (out[2] < 0 or tonumber(first[2]) < out[2]) then out[2] = tonumber(first[2]) end
end
return out
"""

_SCHEDULE = """
local added = 0
for i = 1, #ARGV, 2 do
  local m = ARGV[i + 1]
  if not redis.call('ZSCORE', KEYS[2], m) then
    added = added + redis.call('ZADD', KEYS[1], 'NX', ARGV[i], m)
  end
end
return added
"""


def due_ms(moment: datetime) -> int:
    """The timer score for `moment`: epoch milliseconds, rounded up so it never fires early."""
    return math.ceil(moment.timestamp() * 1000)


@dataclass(frozen=True)
class Claim:
    """What one claim took: (member, due ms) pairs, and the earliest due time or lease end left
    (None when no timer is left). A member claimed again after its lease ran out is given the
    time of its previous claim as its due time, which is not earlier than its real one."""

    timers: list[tuple[str, int]]
    next_due_ms: int | None


class RedisLostTimers(Exception):
    """The epoch key is gone: Redis lost its data and the schedule must be rebuilt."""


class TimerStore:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        base = f"{prefix}{{timers}}:"
        self.due, self.inflight, self.epoch = base + "due", base + "inflight", base + "epoch"
        self._batcher = Batcher(redis)
        self._claim = redis.register_script(_CLAIM)
        self._schedule = redis.register_script(_SCHEDULE)

    async def schedule(self, timers: Sequence[tuple[str, int]]) -> int:
        """Add (broadcast id, due ms) pairs not already scheduled or in flight."""
        added = 0
        for start in range(0, len(timers), 1000):
            args: list[Any] = []
            for member, due_ms in timers[start : start + 1000]:
                args += [due_ms, member]
            added += int(await self._schedule(keys=[self.due, self.inflight], args=args))
        return added

    async def holds(self, member: str) -> bool:
        """Whether `member` is scheduled or in flight. The questions of one turn of the event
        loop go to Redis in one pipeline (a backlog of events asks thousands at once)."""
        scores = await asyncio.gather(
            self._batcher.execute("ZSCORE", self.due, member),
            self._batcher.execute("ZSCORE", self.inflight, member),
        )
        return any(score is not None for score in scores)

    async def forget(self, members: Sequence[str]) -> None:
        if members:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.zrem(self.due, *members)
                pipe.zrem(self.inflight, *members)
                await pipe.execute()

    async def claim_due(self, now_ms: int, lease_ms: int, limit: int) -> Claim:
        """Take up to `limit` timers due by `now_ms` (expired leases first) for this instance,
        each leased for `lease_ms`; `RedisLostTimers` when the epoch key is gone."""
        reply: list[Any] = await self._claim(
            keys=[self.due, self.inflight, self.epoch],
            args=[now_ms, now_ms + lease_ms, limit, lease_ms],
        )
        if reply[0] == 0:
            raise RedisLostTimers
        pairs = reply[2:]
        timers = [(_text(pairs[i]), int(pairs[i + 1])) for i in range(0, len(pairs), 2)]
        return Claim(timers, None if reply[1] < 0 else int(reply[1]))

    async def claim(self, now_ms: int, lease_ms: int, limit: int) -> list[str]:
        """`claim_due`, answering only the members taken."""
        return [member for member, _ in (await self.claim_due(now_ms, lease_ms, limit)).timers]

    async def done_many(self, members: Sequence[str]) -> None:
        """Release fired timers."""
        if members:
            await self._redis.zrem(self.inflight, *members)

    async def put_back(self, member: str, due: int) -> None:
        """Return a claimed timer to the schedule (it was claimed before its time)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zrem(self.inflight, member)
            pipe.zadd(self.due, {member: due})
            await pipe.execute()

    async def next_due_ms(self) -> int | None:
        """The earliest due time or lease end, if any timer exists."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zrange(self.due, 0, 0, withscores=True)
            pipe.zrange(self.inflight, 0, 0, withscores=True)
            firsts: list[Any] = await pipe.execute()
        scores = [int(entries[0][1]) for entries in firsts if entries]
        return min(scores) if scores else None

    async def members(self) -> list[str]:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zrange(self.due, 0, -1)
            pipe.zrange(self.inflight, 0, -1)
            lists: list[Any] = await pipe.execute()
        return [m.decode() for entries in lists for m in entries]

    async def mark_rebuilt(self) -> None:
        await self._redis.set(self.epoch, "1")


def _text(member: Any) -> str:
    return member.decode() if isinstance(member, bytes) else str(member)
