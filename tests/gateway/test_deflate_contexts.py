"""What permessage-deflate leaves on a socket, read off uvicorn's own protocol objects in this
process (libs/runtime/ws_deflate.py): no zlib context survives a message, and a compressed
message is never inflated much past the 4 KiB limit. Each is set beside uvicorn's own offer, on
the same server, so that the measure is seen to detect what it rules out."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from typing import Any

import uvicorn
from uvicorn._types import ASGIReceiveCallable, ASGISendCallable, Scope
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.asyncio.client import connect

from libs.runtime.ws_handshake import FinishedRefusals
from tests.abuse.test_deflate import TEXT, WireSocket, deflated

MAX_SIZE = 4096  # the gateway's ws_max_size (libs/runtime/service.py)


async def echo(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
    """Accept a socket and send every text message back."""
    assert scope["type"] == "websocket"
    await receive()
    await send({"type": "websocket.accept"})
    while (message := await receive())["type"] == "websocket.receive":
        await send({"type": "websocket.send", "text": message.get("text") or ""})


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serving(protocol: type[Any], max_size: int = MAX_SIZE) -> AsyncIterator[_Server]:
    """uvicorn on a free port with `protocol` and permessage-deflate on, as the gateway runs."""
    config = uvicorn.Config(
        echo,
        ws=protocol,
        ws_per_message_deflate=True,
        ws_max_size=max_size,
        lifespan="off",
        log_config=None,
        access_log=False,
    )
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[listening]))
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        yield server
    finally:
        server.should_exit = True
        await task


def url(server: _Server) -> str:
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    return f"http://{host}:{port}"


async def zlib_objects_after_traffic(
    protocol: type[WebSocketsSansIOProtocol],
) -> list[set[str]]:
    """Ten sockets (websockets' client, compression on) each send and receive a message; which
    of its zlib objects each server-side socket still holds."""
    async with serving(protocol) as server:
        clients = [await connect(url(server).replace("http", "ws", 1)) for _ in range(10)]
        for client in clients:
            await client.send("x" * 300)
            assert await client.recv() == "x" * 300
        sockets = [p for p in server.server_state.connections if isinstance(p, protocol)]
        held = [
            {name for name in ("encoder", "decoder") if hasattr(ext, name)}
            for p in sockets
            for ext in p.conn.extensions
        ]
        for client in clients:
            await client.close()
    return held


async def test_idle_socket_holds_no_zlib_context() -> None:
    """Once a message went each way, a socket of the gateway's protocol holds neither a
    compressor nor a decompressor (uvicorn's own offer keeps both on every socket)."""
    assert await zlib_objects_after_traffic(FinishedRefusals) == [set()] * 10
    assert (
        await zlib_objects_after_traffic(WebSocketsSansIOProtocol) == [{"encoder", "decoder"}] * 10
    )


async def inflation_peak(max_size: int) -> tuple[int, int | None]:
    """Bytes this process allocated at most while a server with `max_size` read a 3 MiB
    message compressed into 3 KiB; the close code if it closed the socket."""
    bomb = deflated(b" " * (3 * 2**20))
    async with serving(FinishedRefusals, max_size) as server:
        socket = await WireSocket.open(url(server), {}, "permessage-deflate")
        tracemalloc.start()
        try:
            baseline = tracemalloc.get_traced_memory()[0]
            socket.send(TEXT, bomb, rsv1=True)
            code = await socket.close_code() if max_size == MAX_SIZE else None
            if code is None:
                assert len((await socket.frame(timeout=30)).inflated()) == 3 * 2**20
            peak = tracemalloc.get_traced_memory()[1] - baseline
        finally:
            tracemalloc.stop()
        await socket.close()
    return peak, code


async def test_zip_bomb_is_not_inflated() -> None:
    """A 3 KiB frame that inflates to 3 MiB closes with 1009 having cost the server under 1 MiB
    (most of it the 256 KiB that asyncio reads into): it inflates no more than the 4 KiB limit,
    while with a limit above 3 MiB the same frame costs megabytes."""
    peak, code = await inflation_peak(MAX_SIZE)
    assert code == 1009
    assert peak < 2**20, peak
    unbounded, _ = await inflation_peak(8 * 2**20)
    assert unbounded > 3 * 2**20, unbounded
