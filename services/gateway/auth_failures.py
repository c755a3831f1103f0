"""Failed authentications, limited per client address for every gateway instance together.

Every 401 the gateway answers (no token, a bad or expired one, a refused refresh token, a
WebSocket upgrade refused for its token) spends one of the address's `AUTH_FAILURES_PER_MINUTE`;
past them the answer is 429 `rate_limited` with `Retry-After` instead. A request whose token is
valid is neither counted nor refused here (its caller's own limit applies): many users share one
address behind a carrier's NAT, and one of them failing must not lock the others out.

The address is the peer uvicorn reports, which it takes from `X-Forwarded-For` only when the
peer is a proxy named in `FORWARDED_ALLOW_IPS` (by default none is). An IPv6 client counts by
its /64, which one host can fill with addresses of its own.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.gateway.errors import error_response
from services.gateway.ratelimit import SharedLimiter, rate_limited

_RESPONSE_STARTS = frozenset({"http.response.start", "websocket.http.response.start"})


def client_address(scope: Scope) -> str:
    """The address a request's failures count against."""
    client = scope.get("client")
    host = str(client[0]) if client else ""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host[:64] or "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def is_unauthorized(message: Message) -> bool:
    return message["type"] in _RESPONSE_STARTS and message.get("status") == 401


class AuthFailureLimit:
    """ASGI middleware: each 401 counts against its client's address; past the limit, the
    client gets 429 instead of that 401.

    It keeps no frame of its own below the app: the app gets a `CountedSend` in place of `send`,
    and for a WebSocket that is all this layer holds for the socket's life."""

    def __init__(self, app: ASGIApp, limiter: SharedLimiter) -> None:
        self.app = app
        self.limiter = limiter

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if scope["type"] not in ("http", "websocket"):
            return self.app(scope, receive, send)
        return self.app(scope, receive, CountedSend(self.limiter, scope, receive, send))


class CountedSend:
    """`send` for one request or socket: a 401 spends one of its address's failures; past the
    limit the 429 goes out instead, and the rest of the 401 is swallowed."""

    __slots__ = ("_limiter", "_receive", "_replaced", "_scope", "_send")

    def __init__(self, limiter: SharedLimiter, scope: Scope, receive: Receive, send: Send) -> None:
        self._limiter, self._scope, self._receive, self._send = limiter, scope, receive, send
        self._replaced = False

    async def __call__(self, message: Message) -> None:
        if self._replaced:
            return  # the rest of the 401 that the 429 replaced
        if is_unauthorized(message):
            wait_s = await self._limiter.take(client_address(self._scope))
            if wait_s > 0:
                self._replaced = True
                await error_response(rate_limited(wait_s))(self._scope, self._receive, self._send)
                return
        await self._send(message)
