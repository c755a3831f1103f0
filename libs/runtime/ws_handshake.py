"""uvicorn's WebSocket protocol (websockets' sans-I/O one) with two gaps in its handshake closed.

- A refused upgrade is a finished handshake. An app that refuses with a denial response (the
  gateway's 401 before the upgrade) left uvicorn believing the handshake incomplete, so every
  refusal logged "ASGI callable returned without completing handshake." at ERROR: anyone could
  write error-level lines. It is now logged at INFO only (uvicorn's response line and
  websockets' "connection rejected").
- A handshake request websockets itself refuses (it is not one it can parse) is answered. uvicorn
  wrote nothing (the client hung until it gave up): now whatever websockets queued is sent, a
  400 with the contract's error body when it queued no response, and the connection closed.

With `ws_per_message_deflate` on, it negotiates permessage-deflate without context takeover
(ws_deflate.py) instead of uvicorn's offer, whose zlib contexts lived as long as each socket.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn._types import ASGISendEvent
from uvicorn.config import Config
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState

from libs.runtime.refusals import BAD_HANDSHAKE, refusal_bytes
from libs.runtime.ws_deflate import NO_CONTEXT_DEFLATE


class FinishedRefusals(WebSocketsSansIOProtocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        if config.ws_per_message_deflate:
            self.conn.available_extensions = NO_CONTEXT_DEFLATE

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.handshake_exc is not None and not self.handshake_initiated:
            self._answer_unparsed_handshake()

    async def send(self, message: ASGISendEvent) -> None:
        await super().send(message)
        if message["type"] == "websocket.http.response.body" and not message.get("more_body"):
            self.handshake_complete = True  # refused: the denial response was the whole of it

    def _answer_unparsed_handshake(self) -> None:
        self.handshake_initiated = self.handshake_complete = self.close_sent = True
        queued = b"".join(self.conn.data_to_send())
        self.transport.write(queued or refusal_bytes(BAD_HANDSHAKE, self.default_headers))
        self.transport.close()
