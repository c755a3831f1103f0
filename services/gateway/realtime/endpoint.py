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
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import msgspec
import structlog
from redis.exceptions import RedisError
from starlette.datastructures import Headers, QueryParams
from starlette.routing import WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from libs.events.streams import StreamId, parse_id
from libs.inbox.inbox import Inbox, user_key
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
    scheme, _, token = Headers(scope=ws.scope).get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        token = query_params(ws).get("token", "")
    if not token.strip():
        raise unauthorized("missing")
    secrets = keys.access_secrets()
    try:
        return tokens.verify(token.strip(), secrets)
    except InvalidToken as e:
        raise refused_token(token.strip(), secrets) from e


def query_params(ws: WebSocket) -> QueryParams:
    """The handshake's query parameters, parsed afresh: `ws.query_params` (and `ws.headers`)
    would stay cached on the socket's `WebSocket` for as long as it is open."""
    return QueryParams(ws.scope["query_string"])


async def starting_point(ws: WebSocket, inbox: Inbox, user: str) -> tuple[StreamId, bool]:
    """Where the replay starts, and whether a start older than the inbox needs a resync."""
    given = query_params(ws).get("lastEventId")
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
        """Authenticate and attach (`_attach`), accept, then serve the socket until it closes.
        The serving is done here, not in a coroutine awaited from here: each one a socket's
        endpoint awaits lives, and weighs, as long as the socket."""
        handshake = HandshakeLog(ws.scope)
        attached = await _attach(ws, deps, realtime, handshake)
        if attached is None:
            return
        conn, principal, start, check_gap = attached
        beating = False
        try:
            await ws.accept()
            handshake.answered(101, principal)
            del handshake  # answered: nothing of it lives as long as the socket
            hub.opened(conn)
            conn.catch_up_soon(inbox, start, check_gap=check_gap)
            beating = await _heartbeat(hub, principal)
            while (message := await ws.receive())["type"] != "websocket.disconnect":
                if _is_ping(message.get("text")):
                    conn.send_control(PONG)
        except asyncio.CancelledError:
            if not conn.evicted:
                raise
            _uncancel()  # a lagging client that read nothing: the TCP connection is closed
        finally:
            _closed(hub, conn, principal if beating else None)

    return SocketRoute(PATH, endpoint)


Attached = tuple[Connection, Principal, StreamId, bool]


async def _attach(
    ws: WebSocket, deps: Deps, realtime: Realtime, handshake: HandshakeLog
) -> Attached | None:
    """The socket's connection, attached to the hub, with its caller and where its replay
    starts; None when it was refused (the answer sent and logged)."""
    principal: Principal | None = None
    try:
        principal = socket_principal(ws, deps.keys)
        await rate_limit(deps, f"{principal.role}:{principal.sub}")
    except ApiError as e:
        handshake.answered(e.status, principal)
        await deny(ws, e)
        return None
    user = user_key(principal.role, principal.sub)
    conn = Connection(ws, user, realtime.hub.config.max_pending)
    try:
        start, check_gap = await starting_point(ws, realtime.inbox, user)
        await realtime.hub.attach(conn)
    except (RedisError, OSError) as e:  # OSError covers a subscription timing out
        log.warning("socket_refused_unavailable", error=repr(e))
        handshake.answered(503, principal)
        await deny(ws, unavailable())
        return None
    return conn, principal, start, check_gap


async def _heartbeat(hub: Hub, principal: Principal) -> bool:
    """Count a driver's open socket as its heartbeat (a failure to record one is only logged);
    whether it now counts (False for any other role)."""
    if principal.role != "driver":
        return False
    try:
        await hub.heartbeats.connected(principal.sub)
    except (RedisError, OSError) as e:
        log.warning("socket_heartbeat_failed", error=repr(e))
    return True


def _closed(hub: Hub, conn: Connection, beating: Principal | None) -> None:
    """The socket's endpoint ends: its driver's heartbeat (`beating`) stops, it leaves the hub,
    and it is closed if it is not already."""
    if beating is not None:
        hub.heartbeats.disconnected(beating.sub)
    hub.detach(conn)
    conn.close(1000, "")


Endpoint = Callable[[WebSocket], Coroutine[Any, Any, None]]


class SocketRoute(WebSocketRoute):
    """A WebSocket route that hands each socket to its endpoint with no coroutine of its own in
    between, since whatever sits between uvicorn and the endpoint lives as long as the socket.
    Starlette's own (`handle` awaiting `websocket_session`, which awaits the app's exception
    handlers around an app that awaits the endpoint) kept four coroutines and three closures per
    socket. The exception handlers still apply: `ExceptionMiddleware`, above every route, runs
    the same ones."""

    def __init__(self, path: str, endpoint: Endpoint) -> None:
        super().__init__(path, endpoint)  # the same path, name and `scope["endpoint"]`
        self._endpoint = endpoint

    def handle(self, scope: Scope, receive: Receive, send: Send) -> Coroutine[Any, Any, None]:
        """The endpoint's coroutine for this socket, for the router to await."""
        return self._endpoint(WebSocket(scope, receive=receive, send=send))


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
