"""Per-user inboxes: the Redis stream of each user's messages, its ids are the `eventId`s.

- `<prefix>inbox:{<user>}`: a stream, one entry per message (field `f`: the frame without its
  id), trimmed to about `maxlen` entries, gone after `idle_ttl_s` without a new message.
- `<prefix>delivered:{<event id>}:<part><n>`: set by the call that delivered the `n`-th group
  of recipients of that part of a domain event, kept `seen_ms`. Event ids, never broadcast ids.
- `<prefix>wake:<user>`: the pub/sub channel each new message is published on, as
  `<entry id> <frame>`, to the gateways holding that user's sockets.
- `<prefix>fence:projector`: the newest lease token of the projector that delivered; a delivery
  with an older one (a projector that froze and woke up after losing its lease) writes nothing.

One Lua script call per event does all three for up to `users_per_call` recipients, so a
redelivered event is skipped as a whole and a delivered one is in the inbox and published
together. An event's messages come in parts (the projector sends `broadcast_updated` apart,
since it may leave them out for a newer one), each with the same recipients in the same order
whenever it is delivered, so a group's mark stands for exactly those recipients. A claim of a
broadcast offered to 200 transporters is then one call instead of 200 (in the accept-storm
benchmark the per-user calls were most of the gateway's and Redis's CPU). One call names keys
of many users, so on Redis Cluster the inboxes would need one hash tag; the services use a
single Redis (a primary with a replica), which needs none.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgspec
from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from libs.events.lease import FENCE_CHECK, LeaseLost

StreamId = tuple[int, int]


F = TypeVar("F", bound=msgspec.Struct)


class Message(msgspec.Struct, Generic[F], frozen=True, gc=False):
    """One frame (a struct: `libs.readmodel.frames.Frame`) for one user (`user_key`). A claim
    makes one per notified transporter, so it is a struct the cycle collector does not track."""

    user: str
    frame: F


def user_key(role: str, sub: str) -> str:
    """Who a message is for. Subjects are unique per role only, so the role is part of it."""
    return f"{role}:{sub}"


_encoder = msgspec.json.Encoder()

# KEYS: the projector's fence, the delivery's mark, then each recipient's inbox. ARGV: the
# writer's lease token, how long the mark is kept (ms), inbox length, idle TTL (s), then for each
# recipient: wake channel, frame count, frames. -1 (and nothing written) for a stale token.
_DELIVER = (
    FENCE_CHECK
    + """
if not redis.call('SET', KEYS[2], 1, 'NX', 'PX', ARGV[2]) then return 0 end
local a = 5
for k = 3, #KEYS do
  local channel, n = ARGV[a], tonumber(ARGV[a + 1])
  for i = a + 2, a + 1 + n do
    local id = redis.call('XADD', KEYS[k], 'MAXLEN', '~', ARGV[3], '*', 'f', ARGV[i])
    redis.call('PUBLISH', channel, id .. ' ' .. ARGV[i])
  end
  redis.call('EXPIRE', KEYS[k], ARGV[4])
  a = a + 2 + n
end
return #KEYS - 2
"""
)
_DELIVER_SHA = hashlib.sha1(_DELIVER.encode(), usedforsecurity=False).hexdigest()  # its EVALSHA id


@dataclass(frozen=True)
class InboxConfig:
    maxlen: int = 1000
    seen_ms: int = 15 * 60 * 1000
    idle_ttl_s: int = 24 * 3600
    # Redis calls in flight at once: the process shares one client (a bounded pool) with its
    # HTTP handlers, runners and relay, which a burst of connects or events must not starve.
    concurrency: int = 24
    # Recipients per script call: each call blocks Redis for its duration (about 5 µs a user).
    users_per_call: int = 200


LARGEST_PART = 2**64 - 1  # each part of a stream id is a 64-bit unsigned integer in Redis


def parse_id(raw: str) -> StreamId:
    """`1700000000000-3` as a comparable pair; ValueError for anything else, a part past
    `LARGEST_PART` included (Redis refuses such an id in every command)."""
    ms, dash, seq = raw.partition("-")
    if _digits(ms) and (not dash or _digits(seq)):
        pair = int(ms), int(seq or 0)
        if max(pair) <= LARGEST_PART:
            return pair
    raise ValueError(f"not a stream id: {raw!r}")


def _digits(text: str) -> bool:
    """1-20 ASCII digits (`LARGEST_PART` has 20)."""
    return text.isascii() and text.isdigit() and len(text) <= 20


def format_id(value: StreamId) -> str:
    return f"{value[0]}-{value[1]}"


class Inbox:
    def __init__(self, redis: Redis, prefix: str, config: InboxConfig | None = None) -> None:
        self._redis, self._prefix = redis, prefix
        self._config = config or InboxConfig()
        self._calls = asyncio.Semaphore(self._config.concurrency)

    async def warm(self) -> None:
        """Get ready to deliver at full rate before the first event: Redis knows the delivery
        script, and the client holds a connection for each call that may be in flight at once.
        Otherwise the first burst opens them one by one while events wait (a fan-out that just
        took the projector's lease saw p99 15-22 ms in its first second, 2-4 ms after)."""
        await self._redis.script_load(_DELIVER)
        await asyncio.gather(*(self._redis.ping() for _ in range(self._config.concurrency)))

    def stream(self, user: str) -> str:
        return f"{self._prefix}inbox:{{{user}}}"

    def channel(self, user: str) -> str:
        return f"{self._prefix}wake:{user}"

    @property
    def fence(self) -> str:
        """The fencing key of the projector's lease: the newest token that delivered."""
        return f"{self._prefix}fence:projector"

    def mark(self, event_id: str, part: str, group: int) -> str:
        return f"{self._prefix}delivered:{{{event_id}}}:{part}{group}"

    @property
    def channel_prefix(self) -> str:
        return f"{self._prefix}wake:"

    async def deliver(
        self, event_id: str, messages: Sequence[Message[Any]], part: str = "", token: int = 0
    ) -> int:
        """Append each user's frames of this part of event `event_id` unless they already were;
        publish them. One round trip for all users; the number of users it delivered to now.
        `token` is the writer's lease token: `LeaseLost` (and nothing written) when a newer
        holder has delivered."""
        by_user: dict[str, list[bytes]] = defaultdict(list)
        encoded: dict[int, bytes] = {}  # a frame shared by many users is encoded once
        for m in messages:
            if (raw := encoded.get(id(m.frame))) is None:
                raw = encoded[id(m.frame)] = _encoder.encode(m.frame)
            by_user[m.user].append(raw)
        if not by_user:
            return 0
        users, per_call = list(by_user.items()), self._config.users_per_call
        calls = [
            self._call(self.mark(event_id, part, n), users[start : start + per_call], token)
            for n, start in enumerate(range(0, len(users), per_call))
        ]
        delivered = [int(r) for r in await self._run(calls)]
        if -1 in delivered:
            raise LeaseLost("projector")
        return sum(delivered)

    def _call(
        self, mark: str, users: Sequence[tuple[str, list[bytes]]], token: int
    ) -> tuple[list[str], list[Any]]:
        cfg = self._config
        keys = [self.fence, mark]
        args: list[Any] = [token, cfg.seen_ms, cfg.maxlen, cfg.idle_ttl_s]
        for user, frames in users:
            keys.append(self.stream(user))
            args += [self.channel(user), len(frames), *frames]
        return keys, args

    async def _run(self, calls: Sequence[tuple[list[str], list[Any]]]) -> list[Any]:
        """EVALSHA each call in one pipeline; load the script once if Redis does not know it."""
        try:
            return await self._pipeline(calls)
        except NoScriptError:
            async with self._calls:
                await self._redis.script_load(_DELIVER)
            return await self._pipeline(calls)

    async def _pipeline(self, calls: Sequence[tuple[list[str], list[Any]]]) -> list[Any]:
        if len(calls) == 1:  # the common case: spare the pipeline's overhead
            keys, args = calls[0]
            async with self._calls:
                return [await self._redis.evalsha(_DELIVER_SHA, len(keys), *keys, *args)]
        async with self._calls, self._redis.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                pipe.evalsha(_DELIVER_SHA, len(keys), *keys, *args)
            result: list[Any] = await pipe.execute()
        return result

    async def after(self, user: str, after: StreamId, count: int) -> list[tuple[str, bytes]]:
        """Up to `count` (entry id, frame) of the user after `after`, oldest first."""
        async with self._calls:
            entries: Any = await self._redis.xrange(
                self.stream(user), f"({format_id(after)}", "+", count=count
            )
        return [(_s(i), fields[b"f"]) for i, fields in entries]

    async def holds(self, user: str, entry: StreamId) -> bool:
        """Whether the user's inbox holds the entry `entry`."""
        at = format_id(entry)
        async with self._calls:
            entries: Any = await self._redis.xrange(self.stream(user), at, at, count=1)
        return bool(entries)

    async def last_id(self, user: str) -> StreamId:
        """The newest id in the inbox, (0, 0) when empty: a new socket's starting point."""
        async with self._calls:
            entries: Any = await self._redis.xrevrange(self.stream(user), "+", "-", count=1)
        return parse_id(_s(entries[0][0])) if entries else (0, 0)


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
