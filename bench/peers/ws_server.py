"""The floor: a bare `websockets` server (websockets.asyncio.server, its defaults, so it
negotiates permessage-deflate with a client that offers it) that reads one Redis pub/sub
channel and sends each message to the sockets of the transporter it names.

A socket says who it is with `?sub=bt-<n>` (no authentication, no inbox, no replay: the least
a server can do to fan messages out from Redis). Each message is JSON with `to`; it is sent as
it came with `websockets.broadcast` (written without waiting for the socket). When Redis is
unreachable the reader retries every 0.5 s; what was published meanwhile is lost.

Usage: `python -m bench.peers.ws_server PORT REDIS_URL CHANNEL`; prints `ready` once listening
and subscribed, serves until SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections import defaultdict
from urllib.parse import parse_qs, urlsplit

import redis.asyncio as redis
import uvloop
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

RETRY_S = 0.5

sockets: defaultdict[str, set[ServerConnection]] = defaultdict(set)


async def handler(ws: ServerConnection) -> None:
    """Hold the socket under its `sub` until it closes; what the client sends is ignored."""
    assert ws.request is not None
    sub = parse_qs(urlsplit(ws.request.path).query).get("sub", [""])[0]
    sockets[sub].add(ws)
    try:
        async for _ in ws:
            pass
    except ConnectionClosed:  # a client process that exits closes no socket cleanly
        pass
    finally:
        sockets[sub].discard(ws)
        if not sockets[sub]:
            del sockets[sub]


def dispatch(raw: bytes) -> None:
    """Send one published message to every socket of its `to`."""
    text = raw.decode()
    to = json.loads(text)["to"]
    if to in sockets:
        broadcast(sockets[to], text)


async def read_channel(url: str, channel: str, subscribed: asyncio.Event) -> None:
    """Subscribe and dispatch forever; after a Redis error, subscribe again in `RETRY_S`."""
    client = redis.Redis.from_url(url)
    while True:
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(channel)
            subscribed.set()
            async for message in pubsub.listen():
                if message["type"] == "message":
                    dispatch(message["data"])
        except (redis.RedisError, OSError):
            await asyncio.sleep(RETRY_S)
        finally:
            with contextlib.suppress(redis.RedisError, OSError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]


async def main(port: int, url: str, channel: str) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    subscribed = asyncio.Event()
    reader = asyncio.create_task(read_channel(url, channel, subscribed))
    async with serve(handler, "127.0.0.1", port):
        await subscribed.wait()
        print("ready", flush=True)
        await stop.wait()
    reader.cancel()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3]))
