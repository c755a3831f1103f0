"""Each party's WebSocket: connect to a gateway, log every frame, drop now and then and
reconnect with `?lastEventId=<the last eventId seen>`.

While `calm` is unset a socket lives a random few seconds before the client drops it; once set
(the settle period) sockets stay open until `stop`. A frozen gateway is noticed by the
protocol's ping timing out; the client then reconnects, to any gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlencode

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from chaos.api import Party
from chaos.records import FrameRecord, RunLog, SocketSpan

OnFrame = Callable[[dict[str, Any]], None]
LIFETIME_S = (4.0, 20.0)
RECONNECT_PAUSE_S = (0.2, 1.5)
MAX_SOCKETS = 10_000


class UserSocket:
    """The sockets of one party, one at a time, for the whole run."""

    def __init__(
        self, party: Party, gateways: Sequence[str], log: RunLog, on_frame: OnFrame
    ) -> None:
        self.party, self.gateways, self.log, self.on_frame = party, list(gateways), log, on_frame
        self.last_event_id: str | None = None
        self.connected = asyncio.Event()

    async def run(self, calm: asyncio.Event, stop: asyncio.Event) -> None:
        for _ in range(MAX_SOCKETS):
            if stop.is_set():
                return
            await self._one_socket(calm, stop)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), random.uniform(*RECONNECT_PAUSE_S))

    async def _one_socket(self, calm: asyncio.Event, stop: asyncio.Event) -> None:
        gateway = random.randrange(len(self.gateways))
        span = SocketSpan(
            id=self.log.next_id(),
            user=self.party.user,
            gateway=gateway,
            opened=time.time(),
            last_event_id=self.last_event_id,
        )
        self.log.sockets.append(span)
        try:
            async with connect(
                self._url(gateway),
                open_timeout=5,
                ping_interval=2,
                ping_timeout=4,
                close_timeout=1,
                max_queue=None,
            ) as ws:
                span.connected = time.time()
                self.connected.set()
                await self._receive_until_dropped(ws, span, calm, stop)
        except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed) as e:
            span.error = _describe(e)
        finally:
            span.closed = time.time()

    def _url(self, gateway: int) -> str:
        query = {"token": self.party.token}
        if self.last_event_id is not None:
            query["lastEventId"] = self.last_event_id
        return f"ws://{self.gateways[gateway]}/v1/ws?{urlencode(query)}"

    async def _receive_until_dropped(
        self, ws: ClientConnection, span: SocketSpan, calm: asyncio.Event, stop: asyncio.Event
    ) -> None:
        reading = asyncio.create_task(self._read(ws, span))
        ending = asyncio.create_task(_drop_or_stop(calm, stop))
        try:
            await asyncio.wait({reading, ending}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ending.cancel()
            if not reading.done():
                reading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reading
            elif (error := reading.exception()) is not None:
                span.error = _describe(error)
        span.close_code = ws.close_code

    async def _read(self, ws: ClientConnection, span: SocketSpan) -> None:
        async for raw in ws:
            frame = json.loads(raw)
            if not isinstance(frame, dict):
                continue
            self.log.frames.append(FrameRecord(span.id, self.party.user, time.time(), frame))
            if isinstance(frame.get("eventId"), str):
                self.last_event_id = frame["eventId"]
            self.on_frame(frame)


async def _drop_or_stop(calm: asyncio.Event, stop: asyncio.Event) -> None:
    """Return when the client should drop the socket: a random lifetime (unless calm), or stop."""
    lifetime = random.uniform(*LIFETIME_S)
    started = time.monotonic()
    while not stop.is_set():
        if not calm.is_set() and time.monotonic() - started > lifetime:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.25)


def _describe(error: BaseException) -> str:
    if isinstance(error, InvalidStatus):
        return f"http {error.response.status_code}"
    return type(error).__name__
