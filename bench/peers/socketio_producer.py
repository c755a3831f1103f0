"""python-socketio's producer: the same messages as `ws_producer.py`, at the same times, each
emitted as event `m` to the room named by its `to` (the transporter's room, which its socket
entered on connecting) through `socketio.AsyncRedisManager(url, write_only=True)`: the way
python-socketio's documentation has another process emit to a server's clients.

Usage: `python bench/peers/socketio_producer.py REDIS_URL COUNT RATE SOCKETS SIZE OUTFILE`.
A publish that fails is retried once by python-socketio and then dropped with a logged error
(`AsyncRedisManager._publish`): the producer is never told, so `failed` stays 0 here.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import socketio

from bench.peers.ws_producer import Tally, offer, run_loop, write_tally


async def _main(url: str, count: int, rate: float, sockets: int, size: int) -> Tally:
    manager = socketio.AsyncRedisManager(url, write_only=True)

    async def publish(body: dict[str, Any]) -> object:
        return await manager.emit("m", body, room=body["to"])

    return await offer(publish, count, rate, sockets, size)


if __name__ == "__main__":
    url, count, rate, sockets, size, out = sys.argv[1:7]
    done = run_loop(_main(url, int(count), float(rate), int(sockets), int(size)))
    write_tally(done, Path(out))
