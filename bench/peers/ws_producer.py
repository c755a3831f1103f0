"""The peers' producer: `count` messages offered at `rate` per second (open loop, each at its
scheduled time whatever happened to the ones before), published to a Redis pub/sub channel.

Each message is `{"seq": n, "to": "bt-<n mod sockets>", "sent": <time.time() at publish>,
"pad": "x..."}`, padded to `size` bytes of JSON: message `n` goes to the same transporter as
the n-th event of the `fanout` scenario, and the receiving client's latency is its arrival time
minus `sent` (one machine, one clock). The bare `websockets` floor (`ws_server.py`) reads the
channel; `socketio_producer.py` sends the same messages through python-socketio instead.

Usage: `python bench/peers/ws_producer.py REDIS_URL CHANNEL COUNT RATE SOCKETS SIZE OUTFILE`;
OUTFILE gets `{"offered", "failed", "first", "last"}` (failed: publishes that raised).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Publish = Callable[[dict[str, Any]], Awaitable[object]]


def message(seq: int, sockets: int, size: int) -> dict[str, Any]:
    """Message `seq` for transporter `seq % sockets`, its JSON padded to `size` bytes."""
    body: dict[str, Any] = {"seq": seq, "to": f"bt-{seq % sockets}", "sent": time.time()}
    bare = len(json.dumps({**body, "pad": ""}))
    body["pad"] = "x" * max(0, size - bare)
    return body


@dataclass
class Tally:
    offered: int = 0
    failed: int = 0
    first: float = 0.0
    last: float = 0.0


async def _send(publish: Publish, body: dict[str, Any], tally: Tally) -> None:
    try:
        await publish(body)
    except Exception:  # Redis down: the message is lost, the schedule goes on
        tally.failed += 1


async def offer(publish: Publish, count: int, rate: float, sockets: int, size: int) -> Tally:
    """Publish `count` messages at `rate`/s from 0.5 s from now; each publish runs on its own,
    so one that waits (Redis down, reconnecting) does not hold back the ones due after it."""
    tally, start = Tally(), time.time() + 0.5
    pending: set[asyncio.Task[None]] = set()
    for seq in range(count):
        await asyncio.sleep(max(0.0, start + seq / rate - time.time()))
        body = message(seq, sockets, size)
        tally.last = body["sent"]
        tally.first = tally.first or body["sent"]
        tally.offered += 1
        task = asyncio.create_task(_send(publish, body, tally))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.wait(pending, timeout=30)
    return tally


def write_tally(tally: Tally, out: Path) -> None:
    out.write_text(json.dumps(tally.__dict__))


async def _main(url: str, channel: str, count: int, rate: float, sockets: int, size: int) -> Tally:
    import redis.asyncio as redis

    client = redis.Redis.from_url(url)

    async def publish(body: dict[str, Any]) -> object:
        return await client.publish(channel, json.dumps(body))

    try:
        return await offer(publish, count, rate, sockets, size)
    finally:
        await client.aclose()


def run_loop(work: Awaitable[Tally]) -> Tally:
    """Run `work` on uvloop (the loop uvicorn picks for the gateway and python-socketio)."""
    import uvloop

    async def wrapped() -> Tally:
        return await work

    return uvloop.run(wrapped())


if __name__ == "__main__":
    url, channel, count, rate, sockets, size, out = sys.argv[1:8]
    done = run_loop(_main(url, channel, int(count), float(rate), int(sockets), int(size)))
    write_tally(done, Path(out))
