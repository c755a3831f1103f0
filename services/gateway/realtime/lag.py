"""How late the gateway's event loop runs a timer: a busy or CPU-starved process shows here
before its sockets do (`weelo_gateway_loop_lag_seconds`)."""

from __future__ import annotations

import asyncio

from prometheus_client import Histogram

LOOP_LAG = Histogram(
    "weelo_gateway_loop_lag_seconds",
    "How late a 100 ms timer of the gateway's event loop fired",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)


async def watch_loop_lag(stop: asyncio.Event, every_s: float = 0.1) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        due = loop.time() + every_s
        await asyncio.sleep(every_s)
        LOOP_LAG.observe(max(0.0, loop.time() - due))
