"""permessage-deflate on the gateway's sockets, seen on the wire (issue 15, fan-out memory).

The gateway answers an offer with no context takeover either way, its frames are compressed and
inflate to exactly the frames an uncompressed socket gets, a compressed client message is read,
and the 4 KiB limit on a client message applies to its inflated size: a small frame that would
inflate past it (a zip bomb) closes with 1009. A hand-written client (`WireSocket`) shows RSV1
and the compressed bytes, which `websockets` would hide.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from websockets.asyncio.client import connect

from tests.abuse.test_websocket_abuse import MAX_FRAME, PING, TOO_BIG, status_change
from tests.gateway.conftest import Gateway, new_id

TEXT, CONT, CLOSE, PING_OPCODE = 0x1, 0x0, 0x8, 0x9
RSV1 = 0x40
FIN = 0x80
TAIL = b"\x00\x00\xff\xff"  # what a sync flush ends with, removed on the wire (RFC 7692 7.2.1)
BROWSER_OFFER = "permessage-deflate; client_max_window_bits"


@dataclass(frozen=True)
class WireFrame:
    fin: bool
    rsv1: bool
    opcode: int
    payload: bytes

    def inflated(self) -> bytes:
        """The payload of a whole compressed message, inflated with a fresh context."""
        return zlib.decompressobj(wbits=-15).decompress(self.payload + TAIL)


def deflated(data: bytes, window_bits: int = 12) -> bytes:
    """`data` compressed as one message's payload (a fresh context, the tail removed)."""
    encoder = zlib.compressobj(9, zlib.DEFLATED, -window_bits)
    out = encoder.compress(data) + encoder.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(TAIL)
    return out[:-4]


class WireSocket:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.extensions = ""

    @classmethod
    async def open(cls, url: str, headers: dict[str, str], offer: str | None) -> WireSocket:
        """Upgrade `url` (`http://host:port`) at /v1/ws, offering `offer` as extensions."""
        host, port = url.removeprefix("http://").split(":")
        socket = cls(*await asyncio.open_connection(host, int(port)))
        lines = [
            "GET /v1/ws HTTP/1.1",
            f"Host: {host}:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}",
            "Sec-WebSocket-Version: 13",
            *(f"{name}: {value}" for name, value in headers.items()),
            *([f"Sec-WebSocket-Extensions: {offer}"] if offer else []),
        ]
        socket.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = (await socket.reader.readuntil(b"\r\n\r\n")).decode()
        assert head.startswith("HTTP/1.1 101"), head
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.lower() == "sec-websocket-extensions":
                socket.extensions = value.strip()
        return socket

    def send(self, opcode: int, payload: bytes, *, rsv1: bool, fin: bool = True) -> None:
        """One masked client frame."""
        first = (FIN if fin else 0) | (RSV1 if rsv1 else 0) | opcode
        size = len(payload)
        if size < 126:
            head = struct.pack("!BB", first, 0x80 | size)
        else:
            head = struct.pack("!BBH", first, 0x80 | 126, size)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(head + mask + masked)

    async def frame(self, timeout: float = 10.0) -> WireFrame:
        """The next frame from the server that is not a ping."""
        async with asyncio.timeout(timeout):
            while True:
                first, second = await self.reader.readexactly(2)
                size = second & 0x7F
                if size == 126:
                    (size,) = struct.unpack("!H", await self.reader.readexactly(2))
                elif size == 127:
                    (size,) = struct.unpack("!Q", await self.reader.readexactly(8))
                payload = await self.reader.readexactly(size)
                if first & 0x0F != PING_OPCODE:
                    return WireFrame(bool(first & FIN), bool(first & RSV1), first & 0x0F, payload)

    async def close_code(self) -> int:
        """Read until the server's close frame; its code."""
        while (found := await self.frame()).opcode != CLOSE:
            pass
        return int(struct.unpack("!H", found.payload[:2])[0])

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


# ---- the tests --------------------------------------------------------------------------

NO_CONTEXT = "server_no_context_takeover; client_no_context_takeover; server_max_window_bits=12"


@pytest.fixture(scope="module")
def gateway_services() -> tuple[str, ...]:
    """The fan-out service writes the inbox messages the module's sockets receive."""
    return ("fanout",)


@pytest.fixture
async def wire(gateway: Gateway) -> AsyncIterator[list[WireSocket]]:
    """Hand-written sockets a test opened, closed after it."""
    opened: list[WireSocket] = []
    yield opened
    for socket in opened:
        await socket.close()


async def open_wire(
    gateway: Gateway, opened: list[WireSocket], sub: str, offer: str | None = BROWSER_OFFER
) -> WireSocket:
    socket = await WireSocket.open(gateway.url, gateway.auth("transporter", sub), offer)
    opened.append(socket)
    return socket


OFFERS = {
    "a browser's": (BROWSER_OFFER, f"permessage-deflate; {NO_CONTEXT}; client_max_window_bits=12"),
    "no parameters": ("permessage-deflate", f"permessage-deflate; {NO_CONTEXT}"),
    "context takeover asked for": (
        "permessage-deflate; server_max_window_bits=15; client_max_window_bits=15",
        f"permessage-deflate; {NO_CONTEXT}; client_max_window_bits=12",
    ),
}


@pytest.mark.parametrize(("offer", "answer"), OFFERS.values(), ids=OFFERS.keys())
async def test_offer_is_answered_without_context_takeover(
    gateway: Gateway, wire: list[WireSocket], offer: str, answer: str
) -> None:
    """Whatever the client offers, the gateway negotiates permessage-deflate with no context
    takeover either way and 12-bit windows (the client's only when it offered to limit it)."""
    socket = await open_wire(gateway, wire, new_id("t"), offer)
    assert socket.extensions == answer


async def test_no_offer_gets_no_compression(
    gateway: Gateway, wire: list[WireSocket], database_url: str
) -> None:
    """A client that offers nothing gets uncompressed frames (no RSV1), as before."""
    sub = new_id("t")
    socket = await open_wire(gateway, wire, sub, offer=None)
    assert socket.extensions == ""
    await status_change(database_url, sub)
    frame = await socket.frame()
    assert (frame.opcode, frame.rsv1) == (TEXT, False)
    assert json.loads(frame.payload)["type"] == "driver_status_changed"


async def test_compressed_frames_are_the_frames(
    gateway: Gateway, wire: list[WireSocket], database_url: str
) -> None:
    """Every server frame to a socket that negotiated deflate is compressed (RSV1), inflates on
    its own (no context from earlier messages) to exactly the text an uncompressed socket of the
    same user gets; `websockets` with compression on reads the same frames, and its compressed
    ping is answered."""
    sub = new_id("t")
    compressed = await open_wire(gateway, wire, sub)
    plain = await connect(
        gateway.url.replace("http://", "ws://", 1) + "/v1/ws",
        additional_headers=gateway.auth("transporter", sub),
        compression=None,
    )
    library = await connect(
        gateway.url.replace("http://", "ws://", 1) + "/v1/ws",
        additional_headers=gateway.auth("transporter", sub),
    )
    try:
        assert [e.name for e in library.protocol.extensions] == ["permessage-deflate"]
        for _ in range(3):
            await status_change(database_url, sub)
            frame = await compressed.frame()
            expected = await asyncio.wait_for(plain.recv(), 10)
            assert isinstance(expected, str)
            assert (frame.opcode, frame.rsv1, frame.fin) == (TEXT, True, True)
            assert len(frame.payload) < len(expected.encode())
            assert frame.inflated().decode() == expected
            assert await asyncio.wait_for(library.recv(), 10) == expected
        await library.send(PING)  # compressed by the library
        assert json.loads(await asyncio.wait_for(library.recv(), 10)) == {"type": "pong"}
    finally:
        await plain.close()
        await library.close()


PINGS = {"a ping": PING, "a ping padded to exactly 4 KiB": PING.ljust(MAX_FRAME)}


@pytest.mark.parametrize("ping", PINGS.values(), ids=PINGS.keys())
async def test_compressed_ping_is_answered(
    gateway: Gateway, wire: list[WireSocket], ping: str
) -> None:
    """A compressed client message is inflated and read: a ping (even one whose inflated size
    is exactly the 4 KiB limit) gets a compressed pong."""
    socket = await open_wire(gateway, wire, new_id("t"))
    socket.send(TEXT, deflated(ping.encode()), rsv1=True)
    frame = await socket.frame()
    assert (frame.opcode, frame.rsv1) == (TEXT, True)
    assert json.loads(frame.inflated()) == {"type": "pong"}


BOMB = PING.encode().ljust(3 * 2**20)  # 3 MiB of spaces after a ping
OVER = {
    "one byte over when inflated": [PING.encode().ljust(MAX_FRAME + 1)],
    "3 MiB from 3 KiB on the wire": [BOMB],
    "fragments of 3,000 bytes each inflated": [PING.encode().ljust(3000), b" " * 3000],
}


@pytest.mark.parametrize("parts", OVER.values(), ids=OVER.keys())
async def test_message_inflating_over_4_kib_closes_with_1009(
    gateway: Gateway, wire: list[WireSocket], parts: list[bytes]
) -> None:
    """A compressed client message whose frames are under 4 KiB on the wire but that inflates
    past 4 KiB closes its socket with 1009, unanswered: the limit is on the inflated size, and
    the gateway stops inflating at it."""
    socket = await open_wire(gateway, wire, new_id("t"))
    encoder = zlib.compressobj(9, zlib.DEFLATED, -12)
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        payload = encoder.compress(part) + encoder.flush(zlib.Z_SYNC_FLUSH)
        payload = payload[:-4] if last else payload
        assert len(payload) < MAX_FRAME
        socket.send(CONT if i else TEXT, payload, rsv1=i == 0, fin=last)
    assert await socket.close_code() == TOO_BIG
