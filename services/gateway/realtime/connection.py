"""One open socket: which frames it has been sent, and its catching up from the inbox.

Frames reach a connection from the hub (`deliver`, never blocking) and from its inbox while it
catches up (`catch_up`). Each frame has its inbox id; a connection sends ids in increasing
order and never one it already sent, so live frames that also came in a replay are dropped.
While catching up, live frames are held and sent after the replay.

A connection whose send buffer (`sender.py`) or held frames pass `max_pending` (the client
reads too slowly or is gone) is dropped: nothing more is buffered and the socket is closed with
`LAGGING_CLOSE`; the client resumes with `lastEventId`. One closed because its user opened
more sockets on this process than the hub allows gets `REPLACED_CLOSE` (`Hub.opened`).
"""

from __future__ import annotations

import asyncio

import structlog
from prometheus_client import Counter
from starlette.websockets import WebSocket

from libs.events.streams import StreamId, format_id, parse_id
from libs.inbox.inbox import Inbox
from services.gateway.realtime.sender import SendBuffer
from services.gateway.realtime.wire import RESYNC_REQUIRED, wire_text

log = structlog.get_logger(__name__)

DROPPED = Counter(
    "weelo_gateway_sockets_dropped_total", "WebSockets closed because their client read too slowly"
)
REPLACED = Counter(
    "weelo_gateway_sockets_replaced_total",
    "WebSockets closed because their user opened more than the most one process holds",
)

LAGGING_CLOSE = 4008
REPLACED_CLOSE = 4009
TRY_AGAIN_CLOSE = 1013
PAGE = 100

Held = list[tuple[StreamId, str, bytes]]


class Connection:
    __slots__ = (
        "_again",
        "_catching",
        "_held",
        "_max_pending",
        "_out",
        "_started",
        "last_id",
        "user",
    )

    def __init__(self, ws: WebSocket, user: str, max_pending: int) -> None:
        self.user, self._max_pending = user, max_pending
        self._out = SendBuffer(ws, max_pending)
        self._catching: asyncio.Task[None] | None = None
        self._again = False
        self._held: Held | None = []  # held until the first catch-up ends
        self._started = False  # the endpoint started the first catch-up (from the client's id)
        self.last_id: StreamId = (0, 0)

    @property
    def closed(self) -> bool:
        return self._out.closed

    @property
    def evicted(self) -> bool:
        """True when the connection ended its own endpoint (a client that read nothing)."""
        return self._out.evicted

    def deliver(self, raw_id: str, stored: bytes) -> None:
        """A live frame from the hub: sent in order, held while catching up."""
        if self.closed:
            return
        entry_id = parse_id(raw_id)
        if self._held is None:
            self._enqueue(entry_id, raw_id, stored)
        elif len(self._held) < self._max_pending:
            self._held.append((entry_id, raw_id, stored))
        else:
            self.drop()

    def send_control(self, text: str) -> None:
        """A frame outside the inbox (`pong`, `resync_required`)."""
        self._push(text)

    def catch_up_again(self, inbox: Inbox) -> None:
        """After the live feed was down: send what the inbox got meanwhile, from where this
        connection got. Nothing to do before its first catch-up, which reads the inbox after
        the feed is up (from (0, 0) it would send the whole inbox again)."""
        if self._started:
            self.catch_up_soon(inbox, self.last_id, check_gap=self.last_id != (0, 0))

    def catch_up_soon(
        self, inbox: Inbox, after: StreamId, *, check_gap: bool
    ) -> asyncio.Task[None]:
        """Start `catch_up` unless one is running; then that one runs once more after it, from
        where it got (a second outage of the live feed during the first catch-up)."""
        self._started = True
        if self._catching is not None:
            self._again = True
            return self._catching
        self._catching = asyncio.create_task(self._catch_up_loop(inbox, after, check_gap))
        return self._catching

    async def _catch_up_loop(self, inbox: Inbox, after: StreamId, check_gap: bool) -> None:
        try:
            await self.catch_up(inbox, after, check_gap=check_gap)
            while self._again and not self.closed:
                self._again = False
                await self.catch_up(inbox, self.last_id, check_gap=self.last_id != (0, 0))
        except Exception as e:  # Redis unreachable: the client must come back for the rest
            log.warning("socket_catch_up_failed", user=self.user, error=repr(e))
            self.close(TRY_AGAIN_CLOSE, "try again with lastEventId")
        finally:
            self._catching = None

    async def catch_up(self, inbox: Inbox, after: StreamId, *, check_gap: bool) -> None:
        """Send what the inbox holds after `after`, then what arrived live meanwhile.

        With `check_gap` (`after` is the client's `lastEventId`), an `after` that is not an entry
        the inbox holds gets `resync_required` and the connection goes live: older than its
        oldest entry (messages were trimmed away), newer than its newest (no message ever had
        it: replayed after, every live frame would be dropped as already sent), or lost by Redis
        with the messages around it.
        """
        if self._held is None:
            self._held = []
        try:
            if check_gap and not await _held_by(inbox, self.user, after):
                self.send_control(RESYNC_REQUIRED)
                self.last_id = max(self.last_id, await inbox.last_id(self.user))  # live from here
                return
            await self._replay(inbox, after)
        finally:
            held, self._held = self._held, None
            for entry_id, raw_id, stored in held:
                self._enqueue(entry_id, raw_id, stored)

    async def _replay(self, inbox: Inbox, after: StreamId) -> None:
        self.last_id = max(self.last_id, after)
        while not self.closed:
            page = await inbox.after(self.user, self.last_id, PAGE)
            for raw_id, stored in page:
                self._enqueue(parse_id(raw_id), raw_id, stored)
            if len(page) < PAGE:
                return
            await self.drained()

    def _enqueue(self, entry_id: StreamId, raw_id: str, stored: bytes) -> None:
        if entry_id <= self.last_id:
            return
        self.last_id = entry_id
        self._push(wire_text(raw_id, stored))

    def _push(self, text: str) -> None:
        if not self._out.push(text):
            self.drop()

    async def drained(self) -> None:
        """Wait until everything buffered was handed to the socket."""
        await self._out.drained()

    def drop(self) -> None:
        """Stop sending to a lagging client and close its socket."""
        if not self.closed:
            DROPPED.inc()
            log.warning("socket_lagging_dropped", user=self.user, last_id=format_id(self.last_id))
            self.close(LAGGING_CLOSE, "too slow: reconnect with lastEventId")

    def close_replaced(self) -> None:
        """Close the socket for a newer one of its user (it had more than the hub allows)."""
        if not self.closed:
            REPLACED.inc()
            log.info("socket_replaced", user=self.user)
            self.close(REPLACED_CLOSE, "replaced: too many sockets for this user")

    def close(self, code: int, reason: str) -> None:
        """Send nothing more and close the socket (its receive loop then ends)."""
        self._held = []
        self._out.close(code, reason)


async def _held_by(inbox: Inbox, user: str, after: StreamId) -> bool:
    """Whether `after` is an entry the user's inbox still holds. Not only within its range: an
    entry Redis lost (only its newest writes, then the projector wrote newer ones) leaves
    `after` between the oldest and the newest, and a replay after it would miss what was lost
    with it."""
    return await inbox.holds(user, after)
