"""Per-user inboxes: the Redis stream of each user's messages, its ids are the `eventId`s.

- `<prefix>inbox:{<user>}`: a stream, one entry per message (field `f`: the frame without its
  id), trimmed to about `maxlen` entries, gone after `idle_ttl_s` without a new message.
- `<prefix>inbox:{<user>}:seen`: a sorted set of the domain event ids already delivered to the
  user (score: when), trimmed by age. Members are event ids, never broadcast ids.
- `<prefix>wake:<user>`: the pub/sub channel each new message is published on, as
  `<entry id> <frame>`, to the gateways holding that user's sockets.

One Lua script per user and event does all three, so a redelivered event is skipped as a whole
and a delivered one is in the inbox and published together. Both keys share the hash tag of
the user, so the script runs on Redis Cluster too.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from services.gateway.realtime.frames import Message, encode

StreamId = tuple[int, int]

_DELIVER = """
if redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 0 end
for i = 7, #ARGV do
  local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], '*', 'f', ARGV[i])
  redis.call('PUBLISH', ARGV[6], id .. ' ' .. ARGV[i])
end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', tonumber(ARGV[2]) - tonumber(ARGV[3]))
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[5])
return 1
"""
_DELIVER_SHA = hashlib.sha1(_DELIVER.encode(), usedforsecurity=False).hexdigest()  # its EVALSHA id


@dataclass(frozen=True)
class InboxConfig:
    maxlen: int = 1000
    seen_ms: int = 15 * 60 * 1000
    idle_ttl_s: int = 24 * 3600
    # Redis calls in flight at once: the process shares one client (a bounded pool) with its
    # HTTP handlers, runners and relay, which a burst of connects or events must not starve.
    concurrency: int = 24


def parse_id(raw: str) -> StreamId:
    """`1700000000000-3` as a comparable pair; ValueError for anything else."""
    ms, dash, seq = raw.partition("-")
    if not (ms.isdigit() and (not dash or seq.isdigit())):
        raise ValueError(f"not a stream id: {raw!r}")
    return int(ms), int(seq or 0)


def format_id(value: StreamId) -> str:
    return f"{value[0]}-{value[1]}"


class Inbox:
    def __init__(self, redis: Redis, prefix: str, config: InboxConfig | None = None) -> None:
        self._redis, self._prefix = redis, prefix
        self._config = config or InboxConfig()
        self._calls = asyncio.Semaphore(self._config.concurrency)

    def stream(self, user: str) -> str:
        return f"{self._prefix}inbox:{{{user}}}"

    def channel(self, user: str) -> str:
        return f"{self._prefix}wake:{user}"

    @property
    def channel_prefix(self) -> str:
        return f"{self._prefix}wake:"

    async def deliver(self, event_id: str, messages: Sequence[Message]) -> int:
        """Append each user's frames of event `event_id` unless they already were; publish them.

        One round trip for all users; the number of users it delivered to now.
        """
        by_user: dict[str, list[bytes]] = defaultdict(list)
        for m in messages:
            by_user[m.user].append(encode(m.frame))
        if not by_user:
            return 0
        cfg, now_ms = self._config, int(time.time() * 1000)
        head = [event_id, now_ms, cfg.seen_ms, cfg.maxlen, cfg.idle_ttl_s]
        calls = [
            [self.stream(user), self.stream(user) + ":seen", *head, self.channel(user), *frames]
            for user, frames in by_user.items()
        ]
        return sum(int(r) for r in await self._run(calls))

    async def _run(self, calls: Sequence[Sequence[Any]]) -> list[Any]:
        """EVALSHA each call in one pipeline; load the script once if Redis does not know it."""
        try:
            return await self._pipeline(calls)
        except NoScriptError:
            async with self._calls:
                await self._redis.script_load(_DELIVER)
            return await self._pipeline(calls)

    async def _pipeline(self, calls: Sequence[Sequence[Any]]) -> list[Any]:
        if len(calls) == 1:  # most events have one recipient: spare the pipeline's overhead
            async with self._calls:
                return [await self._redis.evalsha(_DELIVER_SHA, 2, *calls[0])]
        async with self._calls, self._redis.pipeline(transaction=False) as pipe:
            for call in calls:
                pipe.evalsha(_DELIVER_SHA, 2, *call)
            result: list[Any] = await pipe.execute()
        return result

    async def after(self, user: str, after: StreamId, count: int) -> list[tuple[str, bytes]]:
        """Up to `count` (entry id, frame) of the user after `after`, oldest first."""
        async with self._calls:
            entries: Any = await self._redis.xrange(
                self.stream(user), f"({format_id(after)}", "+", count=count
            )
        return [(_s(i), fields[b"f"]) for i, fields in entries]

    async def first_id(self, user: str) -> StreamId | None:
        """The oldest id the inbox still holds; None when it holds nothing."""
        async with self._calls:
            entries: Any = await self._redis.xrange(self.stream(user), "-", "+", count=1)
        return parse_id(_s(entries[0][0])) if entries else None

    async def last_id(self, user: str) -> StreamId:
        """The newest id in the inbox, (0, 0) when empty: a new socket's starting point."""
        async with self._calls:
            entries: Any = await self._redis.xrevrange(self.stream(user), "+", "-", count=1)
        return parse_id(_s(entries[0][0])) if entries else (0, 0)


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
