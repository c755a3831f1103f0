"""Keeping grouped streams small without dropping work a consumer group still has to do.

- An entry may be removed once it is older than the retention window and every group has both
  read it and acknowledged it.
- A consumer idle longer than `consumer_idle_ms` (its process is gone: a live runner reads at
  least every `block_ms`) is removed, but only when nothing is pending on it, checked and done
  in one script: `XGROUP DELCONSUMER` would drop its pending entries from the group for good.
  Its entries are first claimed by a live consumer of the group (the runner's reclaim).
- Retry records (`retry.py`) of entries no longer pending are removed.

Every process trims every grouped stream (`grouped_streams`): the event streams and each
service's command stream. Any number of processes may trim at once: it is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from libs.events.commands import ROUTES, commands_stream
from libs.events.metrics import DEAD_LETTER_ENTRIES, STREAM_LAG, STREAM_PENDING
from libs.events.retry import Failures
from libs.events.streams import CATEGORIES, StreamId, events_stream, format_id, parse_id

LAG_PAGE = 1000  # entries per XRANGE when Redis 6.2 must count a group's lag

log = structlog.get_logger(__name__)


RETENTION_MS = 60_000
INTERVAL_S = 10.0
# A consumer left by a dead process goes within 10 minutes (CONTRACT.md section 8): its entries
# are claimed within `claim_idle_ms` plus their pause (at most a minute or two), then it waits
# this long, then at most one `INTERVAL_S`.
CONSUMER_IDLE_MS = 5 * 60_000

_REMOVE_IDLE_CONSUMERS = """
local function get(list, name)
  for i = 1, #list, 2 do if list[i] == name then return list[i + 1] end end
end
if redis.call('TYPE', KEYS[1]).ok ~= 'stream' then return {} end
local removed = {}
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local name = get(group, 'name')
  for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], name)) do
    if get(consumer, 'pending') == 0 and get(consumer, 'idle') >= tonumber(ARGV[1]) then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[1], name, get(consumer, 'name'))
      table.insert(removed, name)
      table.insert(removed, get(consumer, 'name'))
    end
  end
end
return removed
"""


def grouped_streams(prefix: str) -> tuple[str, ...]:
    """Every stream the system reads with consumer groups."""
    services = sorted(set(ROUTES.values()))
    return (
        *(events_stream(prefix, c) for c in CATEGORIES),
        *(commands_stream(prefix, s) for s in services),
    )


async def safe_trim_point(redis: Redis, stream: str, retention_ms: int) -> StreamId | None:
    """The lowest id that must be kept, or None if the stream does not exist."""
    try:
        groups = await redis.xinfo_groups(stream)
    except ResponseError:
        return None
    floor = (max(int(time.time() * 1000) - retention_ms, 0), 0)
    for group in groups:
        await _measure(redis, stream, group)
        floor = min(floor, await _group_floor(redis, stream, group))
    return floor


async def _measure(redis: Redis, stream: str, group: dict[str, Any]) -> None:
    """The group's lag and pending entries as this pass saw them (`/metrics`)."""
    name = _text(group["name"])
    STREAM_PENDING.labels(stream, name).set(int(group["pending"]))
    lag = await group_lag(redis, stream, group)
    if lag is not None:
        STREAM_LAG.labels(stream, name).set(lag)


async def group_lag(redis: Redis, stream: str, group: dict[str, Any]) -> int | None:
    """Entries the group has not read yet, from an `XINFO GROUPS` row. Redis 7 reports `lag`
    (None when it cannot tell: entries deleted out of order); Redis 6.2, the embedded one of
    local runs, has no such field, so the entries after `last-delivered-id` are counted."""
    if "lag" in group:
        return None if group["lag"] is None else int(group["lag"])
    counted, after = 0, _text(group["last-delivered-id"])
    while True:
        page: Any = await redis.xrange(stream, min=f"({after}", count=LAG_PAGE)
        counted += len(page)
        if len(page) < LAG_PAGE:
            return counted
        after = _text(page[-1][0])


async def _group_floor(redis: Redis, stream: str, group: dict[str, object]) -> StreamId:
    last = parse_id(group["last-delivered-id"])  # type: ignore[arg-type]
    floor = (last[0], last[1] + 1)  # everything after the last read must stay
    if int(group["pending"]) > 0:  # type: ignore[call-overload]
        summary = await redis.xpending(stream, group["name"])  # type: ignore[arg-type]
        if summary["min"] is not None:
            floor = min(floor, parse_id(summary["min"]))
    return floor


async def trim_stream(redis: Redis, stream: str, retention_ms: int) -> int:
    """Remove what every group acknowledged and is older than `retention_ms`; return count."""
    point = await safe_trim_point(redis, stream, retention_ms)
    if point is None:
        return 0
    return int(await redis.xtrim(stream, minid=format_id(point), approximate=False))


async def remove_idle_consumers(redis: Redis, stream: str, idle_ms: int) -> list[tuple[str, str]]:
    """Remove every consumer of `stream` idle at least `idle_ms` with nothing pending; the
    (group, consumer) pairs removed."""
    found: Any = await redis.eval(_REMOVE_IDLE_CONSUMERS, 1, stream, idle_ms)
    names = [_text(n) for n in found]
    return list(zip(names[::2], names[1::2], strict=True))


async def prune_failures(redis: Redis, stream: str) -> int:
    """Remove the retry records of entries of `stream` no group has pending any more."""
    try:
        groups = await redis.xinfo_groups(stream)
    except ResponseError:
        return 0
    removed = 0
    for group in groups:
        name = _text(group["name"])
        floor = await _group_floor(redis, stream, group)
        removed += await Failures(redis, stream, name).prune(floor)
    return removed


async def tidy_stream(redis: Redis, stream: str, retention_ms: int, consumer_idle_ms: int) -> None:
    """One pass over `stream`: trim it, remove idle consumers and stale retry records."""
    removed = await trim_stream(redis, stream, retention_ms)
    gone = await remove_idle_consumers(redis, stream, consumer_idle_ms)
    pruned = await prune_failures(redis, stream)
    if removed or gone or pruned:
        log.debug("stream_tidied", stream=stream, trimmed=removed, consumers=gone, records=pruned)


async def trim_forever(
    redis: Redis,
    streams: Sequence[str],
    stop: asyncio.Event,
    *,
    retention_ms: int = RETENTION_MS,
    interval_s: float = INTERVAL_S,
    consumer_idle_ms: int = CONSUMER_IDLE_MS,
    dead_letter: str | None = None,
) -> None:
    """Tidy `streams` every `interval_s` until `stop` is set (and measure `dead_letter`)."""
    while not stop.is_set():
        for stream in streams:
            try:
                await tidy_stream(redis, stream, retention_ms, consumer_idle_ms)
            except (RedisError, OSError) as e:  # the next pass tries again
                log.warning("trim_failed", stream=stream, error=str(e))
        if dead_letter is not None:
            with contextlib.suppress(RedisError, OSError):
                DEAD_LETTER_ENTRIES.set(int(await redis.xlen(dead_letter)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
