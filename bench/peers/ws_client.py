"""The one load generator of the `fanout` scenario, for every system it measures: a process
holding `count` WebSockets (the `websockets` client library), each a transporter `bt-<n>`,
noting when each message arrived.

Per system, only how a socket opens and reads a message differs:
- `weelo`: our gateway's `GET /v1/ws` with a bearer token; frames carry `eventId` and
  `data.driverId` (`bd<n>`); after a drop it reconnects with `lastEventId`, as clients do.
- `socketio`: python-socketio spoken raw (Engine.IO 4 over a WebSocket, no HTTP long-polling
  first): `40{"sub": ...}` connects to namespace `/` (the server puts the socket in the
  transporter's room), `2` pings are answered `3`, events come as `42["m", {...}]`. A raw
  client rather than 5,000 `socketio.AsyncClient`s: those (aiohttp) would take the cores
  from the servers being measured, and the generator must be the same for every system.
- `floor`: the bare `websockets` server, `?sub=bt-<n>`, plain JSON messages.

Peers' messages carry `seq` and `sent` (the producer's clock); ours the inbox entry's id. Each
arrival is kept as `bd<seq>` -> (arrival time, `sent` or the entry's time), the format the
`fanout` scenario has always read. `resync_required` frames, reconnections and sockets with
permessage-deflate negotiated are counted beside it (OUTFILE.meta.json).

Usage: `python -m bench.peers.ws_client SYSTEM URL FIRST COUNT EXPECTED OUTFILE DEFLATE
SPREAD_S RECONNECT`: prints `ready` once every socket is open, `done` once OUTFILE is written
(when EXPECTED messages came, a line `finish` arrived on stdin, or 2 minutes passed), and exits
when stdin closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvloop
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus, WebSocketException

OPENING = 100  # sockets a client opens at once
WAIT_S = 120.0
RETRY_S = 1.0
RESYNC_REQUIRED = "resync_required"


@dataclass(frozen=True)
class Spec:
    system: str
    url: str
    first: int
    count: int
    expected: int
    out: Path
    deflate: bool = False
    spread_s: float = 20.0
    reconnect: bool = False


@dataclass
class Seen:
    """What one client process got."""

    expected: int
    opened: int = 0
    at: dict[str, tuple[float, float]] = field(default_factory=dict)
    resyncs: int = 0
    reconnects: int = 0
    negotiated: int = 0
    frames: int = 0
    frame_bytes: int = 0
    resynced: set[str] = field(default_factory=set)  # subs told to resync, or to reload
    complete: asyncio.Event = field(default_factory=asyncio.Event)

    def note(self, key: str, aux: float, size: int) -> None:
        """A message arrived now: `key` its `bd<seq>`, `aux` its sent or inbox time."""
        self.at.setdefault(key, (time.time(), aux))
        self.frames += 1
        self.frame_bytes += size
        if len(self.at) >= self.expected:
            self.complete.set()

    def meta(self) -> dict[str, Any]:
        return {
            "resynced": sorted(self.resynced),
            "resyncs": self.resyncs,
            "reconnects": self.reconnects,
            "negotiated": self.negotiated,
            "frames": self.frames,
            "frame_bytes": self.frame_bytes,
        }


@dataclass
class Socket:
    """One transporter's socket: what it needs to open again where it left off."""

    spec: Spec
    sub: str
    seen: Seen
    last_event_id: str | None = None
    reopened: bool = False


def _compression(spec: Spec) -> str | None:
    return "deflate" if spec.deflate else None


async def _open_weelo(s: Socket) -> ClientConnection:
    from bench.fanout import SECRET
    from libs.runtime.tokens import issue

    token = issue(SECRET, role="transporter", sub=s.sub, ttl_s=3600)
    if s.reopened and s.last_event_id is None:  # live.js reloads when it has no id to resume
        s.seen.resynced.add(s.sub)
    url = s.spec.url + (f"?lastEventId={s.last_event_id}" if s.last_event_id else "")
    return await connect(
        url,
        additional_headers={"Authorization": f"Bearer {token}"},
        compression=_compression(s.spec),
        open_timeout=120,
    )


async def _read_weelo(s: Socket, ws: ClientConnection) -> None:
    async for raw in ws:
        frame = json.loads(raw)
        if frame.get("type") == RESYNC_REQUIRED:
            s.seen.resyncs += 1
            s.seen.resynced.add(s.sub)
            continue
        if "eventId" not in frame:
            continue
        s.last_event_id = frame["eventId"]
        entry_s = int(frame["eventId"].partition("-")[0]) / 1000
        s.seen.note(frame["data"]["driverId"], entry_s, len(raw))


async def _open_floor(s: Socket) -> ClientConnection:
    url = f"{s.spec.url}?sub={s.sub}"
    return await connect(url, compression=_compression(s.spec), open_timeout=120)


def _note_peer(s: Socket, body: dict[str, Any], size: int) -> None:
    s.seen.note(f"bd{body['seq']}", float(body["sent"]), size)


async def _read_floor(s: Socket, ws: ClientConnection) -> None:
    async for raw in ws:
        _note_peer(s, json.loads(raw), len(raw))


async def _open_socketio(s: Socket) -> ClientConnection:
    url = f"{s.spec.url}/socket.io/?EIO=4&transport=websocket"
    ws = await connect(url, compression=_compression(s.spec), open_timeout=120)
    opened = str(await ws.recv())
    if not opened.startswith("0"):
        raise RuntimeError(f"no Engine.IO open packet: {opened[:80]}")
    await ws.send("40" + json.dumps({"sub": s.sub}))
    while not (answer := str(await ws.recv())).startswith("40"):
        if answer == "2":
            await ws.send("3")
    return ws


async def _read_socketio(s: Socket, ws: ClientConnection) -> None:
    async for raw in ws:
        text = str(raw)
        if text == "2":
            await ws.send("3")
        elif text.startswith("42"):
            event, body = json.loads(text[2:])
            if event == "m":
                _note_peer(s, body, len(text))


Opener = Callable[[Socket], Awaitable[ClientConnection]]
Reader = Callable[[Socket, ClientConnection], Awaitable[None]]
SYSTEMS: dict[str, tuple[Opener, Reader]] = {
    "weelo": (_open_weelo, _read_weelo),
    "socketio": (_open_socketio, _read_socketio),
    "floor": (_open_floor, _read_floor),
}


def _negotiated(ws: ClientConnection) -> bool:
    response = ws.response
    extensions = response.headers.get("Sec-WebSocket-Extensions", "") if response else ""
    return "permessage-deflate" in extensions


async def hold(s: Socket, gate: asyncio.Semaphore, delay: float) -> None:
    """Open the socket after `delay`, then read it; with `reconnect`, open it again (after
    `RETRY_S`) whenever it closes or fails to open, else end when it closes."""
    opener, reader = SYSTEMS[s.spec.system]
    await asyncio.sleep(delay)
    first = True
    while True:
        try:
            async with gate:
                ws = await opener(s)
            if first:
                s.seen.opened += 1
                s.seen.negotiated += _negotiated(ws)
                first = False
            else:
                s.seen.reconnects += 1
            await reader(s, ws)
        except (OSError, WebSocketException, TimeoutError, InvalidStatus, RuntimeError):
            if not s.spec.reconnect or first:
                raise
        if not s.spec.reconnect:
            return
        s.reopened = True
        await asyncio.sleep(RETRY_S)


async def _finish_line() -> None:
    """Return when stdin has a `finish` line (or closed)."""
    while (line := await asyncio.to_thread(sys.stdin.readline)) and line.strip() != "finish":
        pass


async def _wait_open(seen: Seen, holders: list[asyncio.Task[None]], count: int) -> None:
    while seen.opened < count:
        failed = [h for h in holders if h.done() and h.exception() is not None]
        if failed:
            raise RuntimeError("a socket failed to open") from failed[0].exception()
        await asyncio.sleep(0.1)


async def client(spec: Spec) -> None:
    """Open every socket, print `ready`, note arrivals until done (see the module), write
    OUTFILE and print `done`; keep the sockets open until stdin closes, so that a client that
    finished first does not load the server with thousands of closes while another one still
    measures."""
    seen, gate = Seen(spec.expected), asyncio.Semaphore(OPENING)
    sockets = [Socket(spec, f"bt-{i}", seen) for i in range(spec.first, spec.first + spec.count)]
    holders = [
        asyncio.create_task(hold(s, gate, spec.spread_s * k / spec.count))
        for k, s in enumerate(sockets)
    ]
    await _wait_open(seen, holders, spec.count)
    # A measuring client must neither steal the cores from the server nor note a frame late
    # because it was collecting garbage (with 2,500 sockets a collection here takes 50-300 ms):
    # it does not collect while it measures, which for one run costs a few MB at most.
    gc.freeze()
    gc.disable()
    print("ready", flush=True)
    if spec.expected <= 0:
        seen.complete.set()
    finish = asyncio.create_task(_finish_line())
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(
            asyncio.wait(
                [finish, asyncio.ensure_future(seen.complete.wait())],
                return_when=asyncio.FIRST_COMPLETED,
            ),
            WAIT_S,
        )
    gc.enable()
    await asyncio.to_thread(spec.out.write_text, json.dumps(seen.at))
    meta = spec.out.with_name(spec.out.name + ".meta.json")
    await asyncio.to_thread(meta.write_text, json.dumps(seen.meta()))
    print("done", flush=True)
    if not finish.done():
        await finish
    while await asyncio.to_thread(sys.stdin.readline):
        pass


def spec_from(argv: list[str]) -> Spec:
    system, url, first, count, expected, out, deflate, spread, reconnect = argv
    return Spec(
        system,
        url,
        int(first),
        int(count),
        int(expected),
        Path(out),
        deflate == "1",
        float(spread),
        reconnect == "1",
    )


def command(spec: Spec) -> list[str]:
    """The arguments that run `spec` in a process of its own (`python -m bench.peers...`)."""
    return [
        sys.executable,
        "-m",
        "bench.peers.ws_client",
        spec.system,
        spec.url,
        str(spec.first),
        str(spec.count),
        str(spec.expected),
        str(spec.out),
        "1" if spec.deflate else "0",
        str(spec.spread_s),
        "1" if spec.reconnect else "0",
    ]


if __name__ == "__main__":
    uvloop.run(client(spec_from(sys.argv[1:10])))
