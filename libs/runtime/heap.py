"""Keep the garbage collector's pauses short in a process that holds many long-lived objects:
the gateway's open sockets, the fan-out's projector state.

Each open WebSocket holds about 130 objects the cycle collector tracks (the connection, its
tasks, buffers, headers, the ASGI call chain). A full collection walks every one of them: with
5,000 sockets that is 0.3-0.5 s with the event loop stopped, and under load CPython runs one
every 10-20 s, so every message in flight waits that long.

The gateway (and the fan-out, whose projector keeps thousands of broadcasts' state and its
delivery records) therefore moves what survives to CPython's permanent generation every
`settle_every_s` (`gc.freeze()`, after a collection of the young generations so that young
garbage is not kept): the automatic collections then only walk objects younger than that.
Frozen objects are still freed by reference counting when a socket closes (measured: closing
2,000 sockets leaves no cyclic garbage), so nothing accumulates that way. What only a full
collection could free (cycles that became garbage after they were frozen) is collected by one
full collection every `full_every_s`: a bounded pause at a known rate, logged with its length.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from dataclasses import dataclass

import structlog
from prometheus_client import Histogram

log = structlog.get_logger(__name__)

FULL_COLLECTION = Histogram(
    "weelo_full_collection_seconds",
    "How long the periodic full garbage collection stopped the process's event loop",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)


@dataclass(frozen=True)
class HeapConfig:
    settle_every_s: float = 5.0
    full_every_s: float = 900.0


def settle() -> None:
    """Collect the young generations, then exempt every survivor from later collections."""
    gc.collect(1)
    gc.freeze()


def full_collection() -> int:
    """Collect everything, frozen objects included; the number of unreachable objects found."""
    started = time.perf_counter()
    gc.unfreeze()
    found = gc.collect()
    took = time.perf_counter() - started
    FULL_COLLECTION.observe(took)
    log.info("gc_full_collection", unreachable=found, seconds=round(took, 3))
    return found


async def tend_heap(stop: asyncio.Event, config: HeapConfig | None = None) -> None:
    """Settle every `settle_every_s` and collect fully every `full_every_s`, until `stop`."""
    config = config or HeapConfig()
    next_full = time.monotonic() + config.full_every_s
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), config.settle_every_s)
        if time.monotonic() >= next_full:
            full_collection()
            next_full = time.monotonic() + config.full_every_s
        settle()
