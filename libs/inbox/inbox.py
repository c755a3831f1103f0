"""Per-user inboxes: the Redis stream of each user's messages, its ids are the `eventId`s.

The inboxes are split into `InboxConfig.shards` shards (16), user `u` in shard
`crc32(u) % shards`, and every key of shard `n` carries the hash tag `{inbox:n}`, so that each
script call names keys of one Redis Cluster slot:

- `<prefix>{inbox:<n>}:stream:<user>`: a stream, one entry per message (field `f`: the frame
  without its id), trimmed to about `maxlen` entries, gone after `idle_ttl_s` without a new one.
- `<prefix>{inbox:<n>}:delivered:<event id>:<part><g>`: set by the call that delivered the
  `g`-th group of that shard's recipients of that part of a domain event, kept `seen_ms`.
- `<prefix>{inbox:<n>}:wake:<user>`: the pub/sub channel each new message is published on, as
  `<entry id> <frame>`, to the gateways holding that user's sockets.
- `<prefix>{inbox:<n>}:fence:projector`: the newest lease token of the projector that wrote to
  the shard; a delivery with an older one (a projector that froze and woke up after losing its
  lease) writes nothing. A new holder fences every shard before its first delivery (`fence`).

A Lua script does all three for groups of up to `users_per_call` recipients of one shard, each
group with its mark, so a redelivered event is skipped as a whole and a delivered one is in the
inbox and published together. On a cluster each call delivers one group (its keys in one slot),
the calls of one event in one pipeline; on one server one call delivers as many groups as fit
`users_per_call` recipients. An event's messages come in
parts (the projector sends `broadcast_updated` apart, since it may leave them out for a newer
one), each with the same recipients in the same order whenever it is delivered, so a group's
mark stands for exactly those recipients. A claim of a broadcast offered to 200 transporters is
then one call on one server (at most 16 on a cluster) instead of 200 (in the accept-storm
benchmark the per-user calls were most of the gateway's and Redis's CPU).
"""

from __future__ import annotations

import asyncio
import hashlib
import zlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeVar

import msgspec
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

from libs.events.lease import FENCE_SCRIPT, LeaseLost
from libs.events.streams import StreamId, format_id, parse_id

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

# One call delivers groups of recipients, each group of one shard (on a cluster one group a call,
# its keys in one slot; on one server as many groups as fit `users_per_call`, in one call).
# KEYS: for each group its shard's fence, its mark, then each recipient's inbox. ARGV: the
# writer's lease token, how long a mark is kept (ms), inbox length, idle TTL (s), then for each
# group its recipient count and for each recipient: wake channel, frame count, frames. The
# recipients delivered to now; -1 (and nothing written) when any fence holds a newer token.
_DELIVER = """
local token = tonumber(ARGV[1])
local k, a = 1, 5
while k <= #KEYS do
  if token < tonumber(redis.call('GET', KEYS[k]) or '0') then return -1 end
  local users = tonumber(ARGV[a])
  a = a + 1
  for j = 1, users do a = a + 2 + tonumber(ARGV[a + 1]) end
  k = k + 2 + users
end
local delivered = 0
k, a = 1, 5
while k <= #KEYS do
  local users = tonumber(ARGV[a])
  a = a + 1
  redis.call('SET', KEYS[k], ARGV[1])
  local fresh = redis.call('SET', KEYS[k + 1], 1, 'NX', 'PX', ARGV[2])
  for j = k + 2, k + 1 + users do
    local channel, n = ARGV[a], tonumber(ARGV[a + 1])
    if fresh then
      for i = a + 2, a + 1 + n do
        local id = redis.call('XADD', KEYS[j], 'MAXLEN', '~', ARGV[3], '*', 'f', ARGV[i])
        redis.call('PUBLISH', channel, id .. ' ' .. ARGV[i])
      end
      redis.call('EXPIRE', KEYS[j], ARGV[4])
    end
    a = a + 2 + n
  end
  if fresh then delivered = delivered + users end
  k = k + 2 + users
end
return delivered
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
    # Recipients per script call: each call blocks Redis for its duration (about 5 µs a user).
    users_per_call: int = 200
    # The inboxes' shards (hash tags): every process of a deployment must use the same number.
    shards: int = 16


class Group(NamedTuple):
    """Recipients of one shard delivered under one mark."""

    fence: str
    mark: str
    users: Sequence[tuple[str, list[bytes]]]


class Inbox:
    def __init__(self, redis: Redis, prefix: str, config: InboxConfig | None = None) -> None:
        self._redis, self._prefix = redis, prefix
        self._cluster = _is_cluster(redis)
        self._config = config or InboxConfig()
        self._calls = asyncio.Semaphore(self._config.concurrency)

    async def warm(self) -> None:
        """Get ready to deliver at full rate before the first event: Redis knows the delivery
        script, and the client holds a connection for each call that may be in flight at once.
        Otherwise the first burst opens them one by one while events wait (a fan-out that just
        took the projector's lease saw p99 15-22 ms in its first second, 2-4 ms after)."""
        await self._redis.script_load(_DELIVER)
        await asyncio.gather(*(self._redis.ping() for _ in range(self._config.concurrency)))

    def shard(self, user: str) -> int:
        """The shard of `user`'s inbox: the same in every process (not Python's `hash`)."""
        return zlib.crc32(user.encode()) % self._config.shards

    def _tag(self, shard: int) -> str:
        return f"{self._prefix}{{inbox:{shard}}}:"

    def stream(self, user: str) -> str:
        return f"{self._tag(self.shard(user))}stream:{user}"

    def channel(self, user: str) -> str:
        return f"{self._tag(self.shard(user))}wake:{user}"

    def user_of(self, channel: str) -> str | None:
        """The user whose wake channel `channel` is; None for any other channel."""
        if not channel.startswith(self._prefix):
            return None
        tag, found, user = channel.removeprefix(self._prefix).partition("}:wake:")
        return user if found and tag.startswith("{inbox:") else None

    def fence_key(self, shard: int) -> str:
        """The fencing key of the projector's lease in `shard`: the newest token that wrote."""
        return f"{self._tag(shard)}fence:projector"

    def mark(self, event_id: str, part: str, group: int, shard: int) -> str:
        return f"{self._tag(shard)}delivered:{event_id}:{part}{group}"

    async def fence(self, token: int) -> None:
        """Record `token` as the newest in every shard's fence, so that a holder with an older
        one writes nothing from now on; `LeaseLost` if a newer one was already seen in any.
        A projector that took the lease calls it before its first delivery."""
        shards = range(self._config.shards)
        async with self._calls, self._redis.pipeline(transaction=False) as pipe:
            for shard in shards:
                pipe.eval(FENCE_SCRIPT, 1, self.fence_key(shard), token)
            results: list[Any] = await pipe.execute()
        if any(int(r) != 1 for r in results):
            raise LeaseLost("projector")

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
        by_shard: dict[int, list[tuple[str, list[bytes]]]] = defaultdict(list)
        for user, frames in by_user.items():  # in the order of `messages`, within each shard
            by_shard[self.shard(user)].append((user, frames))
        per_call = self._config.users_per_call
        groups = [
            Group(
                self.fence_key(shard),
                self.mark(event_id, part, n, shard),
                users[at : at + per_call],
            )
            for shard, users in by_shard.items()
            for n, at in enumerate(range(0, len(users), per_call))
        ]
        calls = [self._call(together, token) for together in self._calls_of(groups)]
        delivered = [int(r) for r in await self._run(calls)]
        if -1 in delivered:
            raise LeaseLost("projector")
        return sum(delivered)

    def _calls_of(self, groups: Sequence[Group]) -> list[list[Group]]:
        """The groups each call delivers: one a call on a cluster (its keys in one slot), else
        as many as fit `users_per_call` recipients (one call for a claim's 200 transporters)."""
        calls: list[list[Group]] = []
        room = 0
        for group in groups:
            if self._cluster or len(group.users) > room:
                calls.append([])
                room = self._config.users_per_call
            calls[-1].append(group)
            room -= len(group.users)
        return calls

    def _call(self, groups: Sequence[Group], token: int) -> tuple[list[str], list[Any]]:
        cfg = self._config
        keys: list[str] = []
        args: list[Any] = [token, cfg.seen_ms, cfg.maxlen, cfg.idle_ttl_s]
        for group in groups:
            keys += [group.fence, group.mark]
            args.append(len(group.users))
            tag = group.fence.removesuffix("fence:projector")  # the shard's: named once a call
            for user, frames in group.users:
                keys.append(f"{tag}stream:{user}")
                args += [f"{tag}wake:{user}", len(frames), *frames]
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
            for keys, args in calls:  # not `pipe.evalsha`, which redis-py's cluster pipeline
                # refuses; the command itself goes to the master of its keys' slot
                pipe.execute_command("EVALSHA", _DELIVER_SHA, len(keys), *keys, *args)
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


def _is_cluster(redis: object) -> bool:
    """A Redis Cluster client (`libs.runtime.redis_client` types it as `Redis`)."""
    return isinstance(redis, RedisCluster)


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
