"""python-socketio as its users deploy it beside Redis: `socketio.AsyncServer` with
`client_manager=socketio.AsyncRedisManager(url)` (the one setting this benchmark chooses),
wrapped in `socketio.ASGIApp` and served by uvicorn with uvicorn's defaults (one process, like
the one gateway process it is compared with; permessage-deflate offered by uvicorn's default).

A client enters the room named by the `sub` of its connect packet's auth (`40{"sub": ...}`):
the producer (`socketio_producer.py`) emits each message to one such room from another process.

Usage: `python -m bench.peers.socketio_server PORT REDIS_URL`; serves until SIGTERM.
"""

from __future__ import annotations

import sys
from typing import Any

import socketio
import uvicorn


def app(url: str) -> socketio.ASGIApp:
    """The ASGI app: one Socket.IO server on Redis, each client in its transporter's room."""
    sio = socketio.AsyncServer(async_mode="asgi", client_manager=socketio.AsyncRedisManager(url))

    @sio.event
    async def connect(sid: str, environ: dict[str, Any], auth: dict[str, Any] | None) -> None:
        await sio.enter_room(sid, (auth or {}).get("sub", ""))

    return socketio.ASGIApp(sio)


if __name__ == "__main__":
    uvicorn.run(app(sys.argv[2]), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
