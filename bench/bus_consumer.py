"""The `bus` benchmark's consumer process: a real StreamRunner that notes when each probe arrived.

Usage: python -m bench.bus_consumer REDIS_URL PREFIX COUNT OUTFILE
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import uvloop
from redis.asyncio import Redis

from libs.events.catalogue import BusProbe
from libs.events.dispatch import envelope_of
from libs.events.runner import Delivery, RunnerConfig, StreamRunner
from libs.events.streams import dead_letter_stream, events_stream


async def consume(redis_url: str, prefix: str, count: int) -> dict[int, float]:
    redis = Redis.from_url(redis_url)
    arrivals: dict[int, float] = {}
    stop = asyncio.Event()

    async def handle(delivery: Delivery) -> None:
        event = envelope_of(delivery).event
        if isinstance(event, BusProbe):
            arrivals[event.sequence] = time.time()
            if len(arrivals) >= count:
                stop.set()

    runner = StreamRunner(
        redis,
        stream=events_stream(prefix, "probe"),
        group="bench",
        consumer="bench-1",
        handler=handle,
        dead_letter=dead_letter_stream(prefix),
        config=RunnerConfig(batch_size=500, block_ms=200),
    )
    await redis.set(prefix + "bench:consumer-ready", "1")
    await runner.run(stop)
    await redis.aclose()
    return arrivals


if __name__ == "__main__":
    redis_url, prefix, count, outfile = sys.argv[1:5]
    arrivals = uvloop.run(consume(redis_url, prefix, int(count)))
    Path(outfile).write_text(json.dumps(arrivals))
