"""How the relay writes events to Redis: one script per batch that checks, atomically with the
XADDs, that the writer still holds the relay's lease and that Redis still has everything the
relay published before.

Redis keys (all under the hash tag `{bus}`, so the script also runs on Redis Cluster):
- `{bus}:epoch`: an id the relay sets when it finds Redis empty. Gone means Redis lost its data.
- `{bus}:published`: how many batches were published in this epoch. The relay also logs each
  batch's number in PostgreSQL (`relay_log`), so a count lower than the log's means Redis lost
  its newest writes (a restart from an older snapshot, a replica promoted before it caught up).
- `{bus}:fence:relay`: the largest lease token that wrote; an older holder's batch is refused.
- `{bus}:losses`: a new value each time the relay found Redis had lost data; gateways send
  `resync_required` to every connected client when it changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from typing import Any

import msgspec
from redis.asyncio import Redis

from libs.events.codec import ENVELOPE_FIELD
from libs.events.lease import FENCE_CHECK
from libs.events.streams import bus_epoch_key, bus_losses_key, stream_for


class WireEnvelope(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """The published form of `catalogue.Envelope`, built from a row without decoding the event."""

    event_id: str
    stream_id: str
    version: int
    position: int
    recorded_at: datetime
    correlation_id: str | None
    event: msgspec.Raw


_encoder = msgspec.json.Encoder()


def wire_entry(row: Sequence[Any]) -> bytes:
    position, stream_id, event_id, version, recorded_at, correlation_id, data = row
    return _encoder.encode(
        WireEnvelope(
            event_id=str(event_id),
            stream_id=stream_id,
            version=version,
            position=position,
            recorded_at=recorded_at,
            correlation_id=correlation_id,
            event=msgspec.Raw(data.encode()),
        )
    )


# KEYS: fence, epoch, published, then one target stream per entry.
# ARGV: token, epoch id, the count Redis must hold, the count it holds after, then the entries.
_PUBLISH = (
    FENCE_CHECK.replace("return -1", "return {-1, 0}")
    + """
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return {0, -1} end
local held = tonumber(redis.call('GET', KEYS[3]) or '0')
if held ~= tonumber(ARGV[3]) then return {0, held} end
for i = 4, #KEYS do redis.call('XADD', KEYS[i], '*', '"""
    + ENVELOPE_FIELD.decode()
    + """', ARGV[i + 1]) end
redis.call('SET', KEYS[3], ARGV[4])
return {1, tonumber(ARGV[4])}
"""
)
# KEYS: fence, epoch, published. ARGV: token, the new epoch id.
_START_EPOCH = (
    FENCE_CHECK
    + """
redis.call('SET', KEYS[2], ARGV[2])
redis.call('SET', KEYS[3], '0')
return 1
"""
)


class Outcome(IntEnum):
    FENCED = -1  # a newer lease holder wrote: this relay must stop
    DIVERGED = 0  # Redis lost data since this relay's last batch: resynchronise first
    PUBLISHED = 1


@dataclass(frozen=True)
class RedisState:
    epoch: str | None  # None: Redis holds no epoch (it lost its data, or is new)
    published: int


class Publisher:
    """The relay's writes to Redis, each fenced by `token`."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis, self._prefix = redis, prefix
        base = bus_epoch_key(prefix).removesuffix("epoch")
        self._keys = [f"{base}fence:relay", bus_epoch_key(prefix), f"{base}published"]
        self._publish = redis.register_script(_PUBLISH)
        self._start = redis.register_script(_START_EPOCH)

    async def state(self) -> RedisState:
        epoch, published = await self._redis.mget(self._keys[1:])
        if isinstance(epoch, bytes):
            epoch = epoch.decode()
        return RedisState(epoch or None, int(published or 0))

    async def mark_loss(self, mark: str) -> None:
        """Tell the gateways that Redis lost data, so that connected clients resync."""
        await self._redis.set(bus_losses_key(self._prefix), mark)

    async def start_epoch(self, token: int, epoch: str) -> bool:
        """Mark Redis as holding epoch `epoch`, with nothing published yet; False if fenced."""
        return int(await self._start(keys=self._keys, args=[token, epoch])) == 1

    async def publish(
        self, token: int, epoch: str, held: int, after: int, rows: Sequence[Sequence[Any]]
    ) -> tuple[Outcome, int]:
        """XADD each row to its category stream, in order, if Redis holds epoch `epoch` with
        `held` batches; it then holds `after`. The outcome, and the count Redis holds."""
        keys = [*self._keys, *(stream_for(self._prefix, row[1]) for row in rows)]
        args: list[bytes | str | int] = [token, epoch, held, after]
        args += [wire_entry(row) for row in rows]
        status, count = await self._publish(keys=keys, args=args)
        return Outcome(int(status)), int(count)
