"""Runners wired to test handlers: probe entries, runners started as tasks, pending counts."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from libs.events.catalogue import BusProbe, Envelope
from libs.events.codec import ENVELOPE_FIELD, encode
from libs.events.runner import Delivery, RunnerConfig, StreamRunner

FAST = RunnerConfig(
    block_ms=50,
    claim_idle_ms=200,
    reclaim_interval_s=0.05,
    max_deliveries=3,
    retry_first_pause_s=0.02,
    retry_max_pause_s=0.1,
    retry_window_s=0.0,
)


def probe_entry(stream_id: str, version: int, sequence: int = 0) -> dict[bytes, bytes]:
    envelope = Envelope(
        event_id=str(uuid.uuid4()),
        stream_id=stream_id,
        version=version,
        position=version,
        recorded_at=datetime.now(UTC),
        event=BusProbe(sequence=sequence),
    )
    return {ENVELOPE_FIELD: encode(envelope)}


class Running:
    """Runners started as tasks, stopped together at the end of a test."""

    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    def start(self, runner: StreamRunner) -> StreamRunner:
        self.tasks.append(asyncio.create_task(runner.run(self.stop)))
        return runner

    async def close(self) -> None:
        self.stop.set()
        await asyncio.gather(*(asyncio.wait_for(t, 10) for t in self.tasks))


def make_runner(
    redis: Redis,
    stream: str,
    handler: Callable[[Delivery], Awaitable[None]],
    consumer: str = "c1",
    config: RunnerConfig = FAST,
    **kw: Any,
) -> StreamRunner:
    return StreamRunner(
        redis,
        stream=stream,
        group="g",
        consumer=consumer,
        handler=handler,
        dead_letter=stream + ":dead",
        config=config,
        **kw,
    )


async def pending_count(redis: Redis, stream: str, group: str = "g") -> int:
    return int((await redis.xpending(stream, group))["pending"])


async def consumer_names(redis: Redis, stream: str, group: str = "g") -> set[str]:
    found: Any = await redis.xinfo_consumers(stream, group)
    return {c["name"].decode() if isinstance(c["name"], bytes) else c["name"] for c in found}
