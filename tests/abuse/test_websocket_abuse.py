"""Hostile WebSocket clients against a real gateway process (issue 11, items 2, 6 and 8).

A client frame over 4 KiB closes its socket with 1009; a user holds at most ten sockets on one
gateway process, an eleventh closing the oldest with 4009; a frame nested deeper than any JSON
decoder follows is ignored like any other frame that is not a ping; and a `lastEventId` that no
message ever had gets `resync_required` and then live frames.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from urllib.parse import urlencode

import psycopg
import pytest
from websockets.exceptions import ConnectionClosed

from libs.events.catalogue import DriverAvailabilityChanged
from libs.events.store import append
from libs.events.streams import LARGEST_PART, parse_id
from libs.runtime.tokens import Role
from tests.gateway.conftest import Gateway, new_id
from tests.realtime.sockets import Frame, Socket

MAX_FRAME = 4096  # CONTRACT.md section 7: a client frame over 4 KiB closes the socket with 1009
TOO_BIG = 1009
SOCKETS_PER_USER = 10  # docs/operations.md: per user and gateway process
REPLACED = 4009  # the close code of the oldest socket when one more opens
PING = '{"type":"ping"}'
PONG: Frame = {"type": "pong"}
RESYNC: Frame = {"type": "resync_required"}


class Sockets:
    """The sockets a test opened on the gateway, closed after it."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.opened: list[Socket] = []

    async def open(self, role: Role, sub: str, **query: str) -> Socket:
        base = self.gateway.url.replace("http://", "ws://", 1)
        url = f"{base}/v1/ws" + (f"?{urlencode(query)}" if query else "")
        socket = await Socket.open(url, additional_headers=self.gateway.auth(role, sub))
        socket.role, socket.sub = role, sub
        self.opened.append(socket)
        return socket


@pytest.fixture(scope="module")
def gateway_services() -> tuple[str, ...]:
    """The fan-out service writes the inbox messages the module's sockets receive."""
    return ("fanout",)


@pytest.fixture
async def sockets(gateway: Gateway) -> AsyncIterator[Sockets]:
    opened = Sockets(gateway)
    yield opened
    for socket in opened.opened:
        await socket.close()


async def status_change(database_url: str, transporter: str) -> None:
    """A new driver of `transporter` goes online: an event in PostgreSQL that the gateway turns
    into a `driver_status_changed` in the transporter's inbox and on its sockets."""
    driver = new_id("d")
    event = DriverAvailabilityChanged(driver_id=driver, transporter_id=transporter, online=True)
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        await append(conn, f"driver-{driver}", 0, [event])


async def send_raw(socket: Socket, message: str | list[str]) -> None:
    """Send one text message (fragmented when a list); the server may close before the end."""
    with contextlib.suppress(ConnectionClosed):
        await socket.conn.send(message)


def ms_of(event_id: object) -> int:
    return int(str(event_id).partition("-")[0])


# Item 2: client frames are bounded.


async def test_frame_of_4_kib_is_read(sockets: Sockets) -> None:
    """A ping padded to exactly 4 KiB is still answered with a pong."""
    socket = await sockets.open("customer", new_id("c"))
    await send_raw(socket, PING.ljust(MAX_FRAME))
    assert await socket.count(1) == [PONG]
    assert socket.close_code is None


OVERSIZED = {
    "one byte over": PING.ljust(MAX_FRAME + 1),
    "5,000 bytes of nested arrays": "[" * 5000,
    "100,000 nested arrays": "[" * 100_000,
    "fragments of 2,000 bytes": [PING, " " * 2000, " " * 2000, " " * 2000],
}


@pytest.mark.parametrize("message", OVERSIZED.values(), ids=OVERSIZED.keys())
async def test_frame_over_4_kib_closes_with_1009(
    sockets: Sockets, message: str | list[str]
) -> None:
    """A client message over 4 KiB, in one frame or in fragments, gets a close frame with 1009
    (it is never buffered up to uvicorn's 16 MiB default)."""
    socket = await sockets.open("customer", new_id("c"))
    await send_raw(socket, message)
    assert await socket.closed(timeout=5) == TOO_BIG
    assert socket.frames == []


async def test_eleventh_socket_of_a_user_closes_the_oldest(
    sockets: Sockets, database_url: str
) -> None:
    """A user holds at most ten sockets on a gateway process: each one more closes the user's
    oldest with 4009; the newest ten get every frame, and other users are untouched."""
    sub, other = new_id("t"), await sockets.open("transporter", new_id("t"))
    held = [await sockets.open("transporter", sub) for _ in range(SOCKETS_PER_USER)]
    held.append(await sockets.open("transporter", sub))
    assert await held[0].closed() == REPLACED
    held.append(await sockets.open("transporter", sub))
    assert await held[1].closed() == REPLACED
    await status_change(database_url, sub)
    for socket in held[2:]:
        assert [f["type"] for f in await socket.count(1)] == ["driver_status_changed"]
        assert socket.close_code is None
    await send_raw(other, PING)
    assert await other.count(1) == [PONG]


# Item 6: frames nested deeper than a decoder follows are ignored.

NESTED = {
    "arrays": "[" * 4000,
    "arrays in an unknown field": ('{"type":"ping","x":' + "[" * 4000)[:MAX_FRAME],
    "objects": '{"a":' * 800,
    "arrays as the type": '{"type":' + "[" * 4000,
    "closed arrays in an unknown field": '{"x":' + "[" * 2000 + "]" * 2000 + ',"type":"ping"}',
}


@pytest.mark.parametrize("frame", NESTED.values(), ids=NESTED.keys())
async def test_deeply_nested_frame_is_ignored(
    gateway: Gateway, sockets: Sockets, frame: str
) -> None:
    """A frame under 4 KiB nested thousands of levels deep is ignored like any frame that is
    not a ping: the socket stays open, answers the next ping, and the gateway logs no
    traceback."""
    assert len(frame.encode()) <= MAX_FRAME
    socket = await sockets.open("customer", new_id("c"))
    await send_raw(socket, frame)
    await send_raw(socket, PING)
    assert await socket.count(1) == [PONG]
    assert socket.close_code is None
    assert "Traceback" not in gateway.procs[-1].log.read_text(errors="replace")


# Item 8: a lastEventId no message ever had gets resync_required, then live frames.

NEVER_SEEN = {
    "newer than the newest": "99999999999999-0",
    "past the 64-bit range": "99999999999999999999-0",
    "the largest id": f"{LARGEST_PART}-{LARGEST_PART}",
    "past the largest id": f"{LARGEST_PART}-{LARGEST_PART + 1}",
    "letters": "abc",
    "three parts": "1-2-3",
    "negative": "-1",
    "empty": "",
    "a fraction": "1.5-0",
    "a sign": "+1-0",
    "non-ASCII digits": "\u0661\u0662\u0663-\u0660",
    "4,500 digits": "9" * 4500,
}


@pytest.mark.parametrize("last", NEVER_SEEN.values(), ids=NEVER_SEEN.keys())
async def test_last_event_id_never_seen_gets_resync_then_live(
    sockets: Sockets, database_url: str, last: str
) -> None:
    """A lastEventId newer than the inbox's newest message, past Redis's id range, or malformed
    gets resync_required first and then every live frame (never silence, never 1013)."""
    sub = new_id("t")
    witness = await sockets.open("transporter", sub)
    await status_change(database_url, sub)
    await witness.count(1)  # the inbox holds a message: a replay would start from the id given
    resumed = await sockets.open("transporter", sub, lastEventId=last)
    assert await resumed.count(1) == [RESYNC]
    await status_change(database_url, sub)
    live = (await witness.count(2))[1]
    assert await resumed.count(2) == [RESYNC, live]


async def test_sequence_past_64_bits_within_the_inbox_gets_resync(
    sockets: Sockets, database_url: str
) -> None:
    """A lastEventId between two messages of the inbox, its sequence past 64 bits, gets
    resync_required and then live frames (it used to be read from Redis and close with 1013);
    the first message's own id replays the messages after it."""
    sub = new_id("t")
    witness = await sockets.open("transporter", sub)
    await status_change(database_url, sub)
    first = (await witness.count(1))[0]
    for n in range(2, 12):  # until a message's id has a later millisecond than the first's
        await status_change(database_url, sub)
        if ms_of((await witness.count(n))[-1]["eventId"]) > ms_of(first["eventId"]):
            break
    assert ms_of(witness.frames[-1]["eventId"]) > ms_of(first["eventId"])
    exact = await sockets.open("transporter", sub, lastEventId=first["eventId"])
    assert await exact.count(len(witness.frames) - 1) == witness.frames[1:]
    past = await sockets.open(
        "transporter", sub, lastEventId=f"{ms_of(first['eventId'])}-{LARGEST_PART + 1}"
    )
    assert await past.count(1) == [RESYNC]
    await status_change(database_url, sub)
    live = (await witness.count(len(witness.frames) + 1))[-1]
    assert await past.count(2) == [RESYNC, live]


MALFORMED = ("abc", "1-2-3", "-1", "", "1-", " 1", "1.5-0", "+1-0", "\u0661-0", "0" * 21)


def test_stream_id_parts_are_64_bit_ascii_integers() -> None:
    """`parse_id` takes what Redis takes as a stream id: one or two parts of ASCII digits, each
    at most 2**64 - 1; anything else is a ValueError, never an id sent to Redis."""
    assert parse_id(f"{LARGEST_PART}-{LARGEST_PART}") == (LARGEST_PART, LARGEST_PART)
    assert parse_id("00012-3") == (12, 3)
    assert parse_id("12") == (12, 0)
    for raw in (f"{LARGEST_PART + 1}-0", f"1-{LARGEST_PART + 1}", "9" * 4500, *MALFORMED):
        with pytest.raises(ValueError):
            parse_id(raw)
