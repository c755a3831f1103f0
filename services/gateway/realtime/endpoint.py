"""`GET /v1/ws` (CONTRACT.md section 7): authenticate, subscribe, replay, then live frames.

1. The access token (`Authorization: Bearer` or `?token=`) is checked before the upgrade: a bad
   one gets the API's 401 body as an HTTP response and never a socket.
2. The user's wake channel is subscribed (confirmed by Redis) before anything is read from the
   inbox, so nothing published in between is missed.
3. The socket is accepted; the inbox is replayed after `lastEventId` (or after its newest entry
   when there is none), `resync_required` first when `lastEventId` is no id within the inbox
   (older than its oldest entry, newer than its newest, or malformed).
4. Once accepted, the user's oldest socket on this process is closed when it holds more than
   `HubConfig.max_sockets_per_user` (`Hub.opened`).
5. Client `{"type": "ping"}` gets `{"type": "pong"}`; anything else from the client is ignored,
   however deeply nested. A client message over 4 KiB never reaches here: uvicorn closes the
   socket with 1009 (`ws_max_size`, `libs/runtime/service.py`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import msgspec
import structlog
from redis.exceptions import RedisError
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from libs.inbox.inbox import Inbox, StreamId, parse_id, user_key
from libs.runtime import tokens
from libs.runtime.service import Resources
from libs.runtime.tokens import InvalidToken, Principal
from services.gateway.access_log import HandshakeLog
from services.gateway.auth import KeySource, refused_token
from services.gateway.errors import ApiError, error_response, unauthorized, unavailable
from services.gateway.http import Deps, rate_limit
from services.gateway.realtime.connection import Connection
from services.gateway.realtime.hub import Hub, HubConfig
from services.gateway.realtime.wire import PONG

log = structlog.get_logger(__name__)

PATH = "/v1/ws"


@dataclass(frozen=True)
class Realtime:
    hub: Hub
    inbox: Inbox


def realtime_for(resources: Resources) -> Realtime:
    """The hub and inbox of this gateway process (no I/O until the hub runs)."""
    settings = resources.settings
    inbox = Inbox(resources.redis, settings.redis_key_prefix)
    config = HubConfig(presence_ttl_s=settings.presence_ttl_seconds)
    hub = Hub(resources.redis, inbox, settings.redis_key_prefix, resources.instance, config)
    return Realtime(hub, inbox)


class ClientMessage(msgspec.Struct):
    type: str


_client_decoder = msgspec.json.Decoder(ClientMessage)


def socket_principal(ws: WebSocket, keys: KeySource) -> Principal:
    """The caller named by the bearer header, else by `?token=`; 401 for anything else."""
    scheme, _, token = ws.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        token = ws.query_params.get("token", "")
    if not token.strip():
        raise unauthorized("missing")
    secrets = keys.access_secrets()
    try:
        return tokens.verify(token.strip(), secrets)
    except InvalidToken as e:
        raise refused_token(token.strip(), secrets) from e


async def starting_point(ws: WebSocket, inbox: Inbox, user: str) -> tuple[StreamId, bool]:
    """Where the replay starts, and whether a start older than the inbox needs a resync."""
    given = ws.query_params.get("lastEventId")
    if given is None:
        return await inbox.last_id(user), False
    try:
        return parse_id(given), True
    except ValueError:
        return (0, 0), True  # no such id: the client must resync


async def deny(ws: WebSocket, error: ApiError) -> None:
    """Refuse before the upgrade: the error as an HTTP response where the server can."""
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        await ws.send_denial_response(error_response(error))
    else:
        await ws.close(1008)


def socket_route(deps: Deps, realtime: Realtime) -> WebSocketRoute:
    hub, inbox = realtime.hub, realtime.inbox

    async def endpoint(ws: WebSocket) -> None:
        handshake, principal = HandshakeLog(ws.scope), None
        try:
            principal = socket_principal(ws, deps.keys)
            await rate_limit(deps, f"{principal.role}:{principal.sub}")
        except ApiError as e:
            handshake.answered(e.status, principal)
            await deny(ws, e)
            return
        user = user_key(principal.role, principal.sub)
        conn = Connection(ws, user, hub.config.max_pending)
        try:
            start, check_gap = await starting_point(ws, inbox, user)
            await hub.attach(conn)
        except (RedisError, OSError) as e:  # OSError covers a subscription timing out
            log.warning("socket_refused_unavailable", error=repr(e))
            handshake.answered(503, principal)
            await deny(ws, unavailable())
            return
        try:
            await ws.accept()
            handshake.answered(101, principal)
            hub.opened(conn)
            conn.catch_up_soon(inbox, start, check_gap=check_gap)
            await _serve(ws, conn, hub, principal)
        except asyncio.CancelledError:
            if not conn.evicted:
                raise
            _uncancel()  # a lagging client that read nothing: the TCP connection is closed
        finally:
            hub.detach(conn)
            conn.close(1000, "")

    return WebSocketRoute(PATH, endpoint)


async def _serve(ws: WebSocket, conn: Connection, hub: Hub, principal: Principal) -> None:
    """Answer pings until the client leaves; an open driver socket is a heartbeat."""
    driver = principal.role == "driver"
    if driver:
        try:
            await hub.heartbeats.connected(principal.sub)
        except (RedisError, OSError) as e:
            log.warning("socket_heartbeat_failed", error=repr(e))
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            if _is_ping(message.get("text")):
                conn.send_control(PONG)
    finally:
        if driver:
            hub.heartbeats.disconnected(principal.sub)


def _uncancel() -> None:
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


def _is_ping(text: str | None) -> bool:
    """Whether a client frame is `{"type": "ping"}`. A frame nested deeper than the decoder
    follows (it skips unknown fields by recursion) is no ping either."""
    if text is None:
        return False
    try:
        return _client_decoder.decode(text).type == "ping"
    except (msgspec.DecodeError, RecursionError):
        return False
