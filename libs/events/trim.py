"""Stream trimming that never drops an entry some consumer group has not acknowledged.

An entry may be removed once it is older than the retention window and every group has both
read it and acknowledged it. Any number of processes may trim at once: it is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

log = structlog.get_logger(__name__)

StreamId = tuple[int, int]


def parse_id(value: bytes | str) -> StreamId:
    text = value.decode() if isinstance(value, bytes) else value
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def format_id(value: StreamId) -> str:
    return f"{value[0]}-{value[1]}"


async def safe_trim_point(redis: Redis, stream: str, retention_ms: int) -> StreamId | None:
    """The lowest id that must be kept, or None if the stream does not exist."""
    try:
        groups = await redis.xinfo_groups(stream)
    except ResponseError:
        return None
    floor = (max(int(time.time() * 1000) - retention_ms, 0), 0)
    for group in groups:
        floor = min(floor, await _group_floor(redis, stream, group))
    return floor


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


async def trim_forever(
    redis: Redis,
    streams: Sequence[str],
    stop: asyncio.Event,
    *,
    retention_ms: int = 60_000,
    interval_s: float = 10.0,
) -> None:
    """Trim `streams` every `interval_s` until `stop` is set."""
    while not stop.is_set():
        for stream in streams:
            try:
                removed = await trim_stream(redis, stream, retention_ms)
            except RedisError as e:
                log.warning("trim_failed", stream=stream, error=str(e))
                continue
            if removed:
                log.debug("stream_trimmed", stream=stream, removed=removed)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
