"""Bounds on a request's head, for the HTTP server of every service (uvicorn with httptools).

llhttp puts no limit on a request line or on headers, and uvicorn's httptools protocol no time
limit on a head that never completes. A WebSocket upgrade over websockets' own limits (8192-byte
lines, 128 headers) got no answer at all: websockets refused it with a response that uvicorn
never wrote. `HeadLimits` answers at once, with the contract's error body and
`Connection: close`:

- a request target (path and query) over `MAX_TARGET_BYTES`: 414 `uri_too_long`;
- a header field over `MAX_FIELD_BYTES`, more than `MAX_FIELDS` fields, or a head over
  `MAX_HEAD_BYTES` in all: 431 `headers_too_large`;
- a head begun and not complete within the header timeout: 408 `request_timeout`.

A connection that sends no byte within the header timeout of opening is closed without an
answer; one idle after a response keeps the keep-alive timeout. The limits sit inside
websockets' own, so every upgrade that passes them also passes its handshake parser.

When the server stops (`draining.DrainingServer`), uvicorn closed at once every connection with
no response under way, a fresh one whose request had not yet arrived or been parsed among them:
its client saw the request it had sent dropped (a reset). Here a connection that is idle after a
response still closes at once; one whose first request has not yet come, or whose next head is
under way, gets up to `DRAIN_GRACE_S` to begin it (a head once begun has the header timeout), and
the request is answered with `Connection: close` and the connection closed. A WebSocket upgrade
in that grace is stopped as uvicorn stops any handshake under way at shutdown.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import httptools
import structlog
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from libs.runtime.refusals import (
    HEAD_TIMEOUT,
    HEADERS_TOO_LARGE,
    URI_TOO_LONG,
    Refusal,
    refusal_bytes,
)

log = structlog.get_logger(__name__)

MAX_TARGET_BYTES = 8000
MAX_FIELD_BYTES = 8000
MAX_FIELDS = 100
MAX_HEAD_BYTES = 16 * 1024
LINGER_S = 2.0  # after a refusal, read (and drop) what the client still sends, then close
DRAIN_GRACE_S = 1.0  # at shutdown, for a connection to begin the request it has not yet sent


@runtime_checkable
class _Stoppable(Protocol):
    def shutdown(self) -> None: ...


class HeadRefused(Exception):
    """Raised from a parser callback: the head is answered with `refusal`."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.code)
        self.refusal = refusal


@dataclass(slots=True)
class _Head:
    number: int = 0  # heads begun on this connection
    open: bool = False  # begun, not complete
    parsed: int = 0  # bytes of its target and of its complete fields
    whole_chunks: int = 0  # bytes of the chunks that fell entirely within it
    between: bool = True  # no message under way (none yet, or the last one complete)


def head_limits(header_timeout_s: float) -> type[HeadLimits]:
    """The protocol class for uvicorn's `Config(http=...)` with this header timeout."""

    class Configured(HeadLimits):
        header_timeout = header_timeout_s

    return Configured


class HeadLimits(HttpToolsProtocol):
    header_timeout = 10.0

    def __init__(
        self, config: Config, server_state: ServerState, app_state: dict[str, Any], **kw: Any
    ) -> None:
        super().__init__(config, server_state, app_state, **kw)
        self._head = _Head()
        self._head_timer: asyncio.TimerHandle | None = None
        self._refused = False
        self._draining = False
        self._grace: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """uvicorn's, except that a head refused by a callback gets its own answer (uvicorn
        answers every parser error 400) and a chunk lying wholly within a head is counted."""
        if self._refused:
            return
        before = (self._head.number, self._head.open, self._head.between)
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as e:
            self._parser_failed(e.__context__)
        except httptools.HttpParserError as e:
            self._parser_failed(e)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        else:
            self._after_chunk(before, len(data))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head = _Head(number=self._head.number + 1, open=True, between=False)

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._head.parsed += len(url)
        if len(self.url) > MAX_TARGET_BYTES:
            raise HeadRefused(URI_TOO_LONG)

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value)
        self._head.parsed += size + 4  # ": " and CRLF
        if (
            size > MAX_FIELD_BYTES
            or len(self.headers) >= MAX_FIELDS
            or self._head.parsed > MAX_HEAD_BYTES
        ):
            raise HeadRefused(HEADERS_TOO_LARGE)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._head.open = False
        self._disarm_head_timer()
        super().on_headers_complete()
        if self._draining and self.cycle is not None:
            self.cycle.keep_alive = False  # answered, then closed

    def handle_websocket_upgrade(self) -> None:
        super().handle_websocket_upgrade()
        upgraded = self.transport.get_protocol()
        if upgraded is not self:
            # Done with this connection, which never sees `connection_lost`: drop the parser as
            # uvicorn does there, since the parser holds this protocol's callbacks (a cycle that
            # only a full collection would free, with this protocol, its transport and buffers).
            self.parser = None  # type: ignore[assignment]
        if self._draining and upgraded is not self and isinstance(upgraded, _Stoppable):
            upgraded.shutdown()

    def shutdown(self) -> None:
        """Called by the server to begin a graceful shutdown (uvicorn's, but for the grace)."""
        if self._draining:
            return
        self._draining = True
        if self._refused:  # answered; closes once the client stops sending (`_refuse`)
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False  # the response under way is finished, then closed
        elif self._idle():
            if self._head.number == 0:  # the first request not yet come: a grace to send it
                grace = min(DRAIN_GRACE_S, self.header_timeout)
                self._grace = self.loop.call_later(grace, self._grace_over)
            else:  # idle after a response
                self.transport.close()
        # else a head under way: the header timeout bounds it, and it is answered and closed

    def _idle(self) -> bool:
        return self._head.between and (self.cycle is None or self.cycle.response_complete)

    def _grace_over(self) -> None:
        self._grace = None
        if not self.transport.is_closing() and self._idle():
            self.transport.close()

    def on_message_complete(self) -> None:
        self._head.between = True
        super().on_message_complete()

    def _after_chunk(self, before: tuple[int, bool, bool], size: int) -> None:
        """A head still open after a chunk: time it (from now, when this chunk began it: a
        head that arrives in one chunk never arms a timer) and count the chunk if it lay wholly
        within the head (it continued the head, or began it with no message under way).
        httptools holds an incomplete header field back from the callbacks; this bounds it."""
        head = self._head
        if not head.open:
            return
        if self._head_timer is None:
            self._arm_head_timer()
        number, was_open, was_between = before
        continued = was_open and head.number == number
        started = was_between and head.number == number + 1
        if continued or started:
            head.whole_chunks += size
            if head.whole_chunks > MAX_HEAD_BYTES:
                self._refuse(HEADERS_TOO_LARGE)

    def _parser_failed(self, error: BaseException | None) -> None:
        if isinstance(error, HeadRefused):
            self._refuse(error.refusal)
            return
        message = "Invalid HTTP request received."
        self.logger.warning(message)
        self.send_400_response(message)

    def _refuse(self, refusal: Refusal) -> None:
        """Answer `refusal` and close: at once when the client has stopped sending, else after
        reading what it still sends for up to `LINGER_S` (closing a socket with unread data
        resets it, and the client could lose the answer). The client's end of the stream closes
        the transport sooner (uvicorn's `eof_received`)."""
        log.info("request_head_refused", status=refusal.status.value, client=self._peer())
        self._refused = True
        self._disarm_head_timer()
        self.transport.write(refusal_bytes(refusal, self.server_state.default_headers))
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._head.open and (self.cycle is None or self.cycle.response_complete):
            self._refuse(HEAD_TIMEOUT)
        else:  # nothing sent yet, or a response under way that a 408 would corrupt
            self.transport.close()

    def _peer(self) -> str | None:
        return f"{self.client[0]}:{self.client[1]}" if self.client else None
