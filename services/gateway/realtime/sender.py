"""A socket's bounded send buffer.

Frames are handed to the socket by a task started when there is something to send and ending
when the buffer is empty, so an idle socket costs no task of its own and nobody ever waits on a
slow client. The queue itself exists only while frames wait (an empty deque is 760 bytes, a
quarter of what an idle socket's own objects weigh beside uvicorn's). `push` refuses a frame
once `max_pending` are waiting: the caller then drops the connection.
"""

from __future__ import annotations

import asyncio
from collections import deque

import structlog
from starlette.websockets import WebSocket

log = structlog.get_logger(__name__)

CLOSE_TIMEOUT_S = 5.0


class SendBuffer:
    __slots__ = (
        "_closer",
        "_max_pending",
        "_owner",
        "_queue",
        "_sender",
        "_ws",
        "closed",
        "evicted",
    )

    def __init__(self, ws: WebSocket, max_pending: int) -> None:
        self._ws, self._max_pending = ws, max_pending
        self._queue: deque[str] | None = None  # only while frames wait (`_drain` drops it)
        self._sender: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        self._owner = asyncio.current_task()  # the socket's endpoint
        self.closed = False
        self.evicted = False

    def push(self, text: str) -> bool:
        """Queue `text`; False when the buffer is full (nothing is queued then)."""
        if self.closed:
            return True
        if self._queue is None:
            self._queue = deque()
        elif len(self._queue) >= self._max_pending:
            return False
        self._queue.append(text)
        if self._sender is None:
            self._sender = asyncio.create_task(self._drain())
        return True

    async def _drain(self) -> None:
        """Send queued frames until none is left; the queue goes with the last one."""
        try:
            while self._queue:
                await self._ws.send_text(self._queue.popleft())
        except Exception as e:  # the client went away; its receive loop ends the connection
            log.debug("socket_send_failed", error=repr(e))
            self.closed = True
        finally:
            self._queue = None
            self._sender = None

    async def drained(self) -> None:
        """Wait until everything queued was handed to the socket."""
        while self._sender is not None:
            await asyncio.wait([self._sender])

    def close(self, code: int, reason: str) -> None:
        """Send nothing more and close the socket (its receive loop then ends)."""
        if self._closer is not None:
            return
        self.closed = True
        self._queue = None
        if self._sender is not None:
            # Forgotten once cancelled: a task cancelled before it began keeps a CancelledError
            # whose traceback holds `_drain`'s frame and so this buffer, a cycle if this buffer
            # still held the task (tests/realtime/test_heap_gateway.py).
            self._sender.cancel()
            self._sender = None
        self._closer = asyncio.create_task(self._close(code, reason))

    async def _close(self, code: int, reason: str) -> None:
        """Send the close frame. A client that reads nothing for `CLOSE_TIMEOUT_S` never gets
        it: its endpoint is then ended (`evicted`) and the server closes the TCP connection."""
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self._ws.close(code, reason)
        except TimeoutError:
            if self._owner is not None and not self._owner.done():
                self.evicted = True
                self._owner.cancel()
                self._owner = None  # as `_sender` in `close`: its frames hold this buffer
        except Exception as e:  # already closed by the client
            log.debug("socket_close_failed", error=repr(e))
