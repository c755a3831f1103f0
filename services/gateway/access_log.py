"""One INFO line per request, `access`: method, route template, status, duration, principal and
request id (docs/operations.md, "Logs"). uvicorn's own access log stays off (`service.py`).

- `route` is the route's template (`/v1/broadcasts/{broadcast_id}`), `unmatched` for a path no
  route names: never the raw path, whose ids and query string (`?token=`) stay out of the log.
- `principal` is `{"role", "sub"}` of the token the request authenticated with (an access token,
  or a refresh token at `/v1/auth/refresh`), taken from `tokens.verify` as the route checked it
  (`tokens.recording_principals`); null when none was valid. Never the token.
- `request_id` is the request's correlation id: the caller's `X-Request-ID` when sane, else a new
  one (`middleware.request_id`); the same value as the line's `correlation_id`.
- A WebSocket handshake is one line when it is answered: 101 when the socket is accepted, the
  refusal's status otherwise; `duration_ms` is the handshake's time, not the socket's life. The
  socket's endpoint writes it (`handshake_logger`): a middleware wrapping the socket would live
  as long as it does, which cost 2.8 KiB per idle socket (29.2 against 32.0 KiB measured).
- Probes and scrapes (`/livez`, `/health`, `/metrics`) are logged only when they fail (status
  400 or more): the load balancer and ECS ask every few seconds, their successes say nothing
  the target's health does not, and a failing `/health` line tells why a task left the pool.
"""

from __future__ import annotations

import time

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from libs.runtime.tokens import Principal, recording_principals
from services.gateway.middleware import request_id, route_template

log = structlog.get_logger(__name__)

QUIET_WHEN_OK = frozenset({"/livez", "/health", "/metrics"})


def log_access(
    scope: Scope,
    status: int,
    started: float,
    principals: list[Principal],
    rid: str,
    *,
    correlation_id: str | None = None,
) -> None:
    """Write the request's `access` line (unless it is a probe that succeeded); `correlation_id`
    where the logger's context does not hold it."""
    route = route_template(scope)
    if route in QUIET_WHEN_OK and status < 400:
        return
    principal = principals[-1] if principals else None
    log.info(
        "access",
        method=scope.get("method", "GET"),  # a WebSocket handshake is a GET
        route=route,
        status=status,
        duration_ms=round((time.perf_counter() - started) * 1000, 2),
        principal={"role": principal.role, "sub": principal.sub} if principal else None,
        request_id=rid,
        **({"correlation_id": correlation_id} if correlation_id else {}),
    )


class AccessLog:
    """ASGI middleware: the `access` line of each HTTP request and WebSocket handshake. Inside
    `RequestContext`, which gives an HTTP request its id, and outside `AuthFailureLimit`, so
    the line shows the status the client got."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._request(scope, receive, send)
        else:  # a WebSocket's handshake line comes from its endpoint (`handshake_logger`)
            await self.app(scope, receive, send)

    async def _request(self, scope: Scope, receive: Receive, send: Send) -> None:
        rid = str(scope.get("state", {}).get("correlation_id") or request_id(scope))
        started, status = time.perf_counter(), 500

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        with recording_principals() as principals:
            try:
                await self.app(scope, receive, send_noting_status)
            finally:
                log_access(scope, status, started, principals, rid)


class HandshakeLog:
    """The `access` line of one WebSocket handshake, written once by the socket's endpoint when
    it answers (`answered`), with the principal its token named, if any."""

    __slots__ = ("_done", "_scope", "_started", "request_id")

    def __init__(self, scope: Scope) -> None:
        self._scope, self._started, self._done = scope, time.perf_counter(), False
        self.request_id = request_id(scope)

    def answered(self, status: int, principal: Principal | None = None) -> None:
        if not self._done:
            self._done = True
            principals = [principal] if principal is not None else []
            # Not bound to the socket's context: whatever it holds lives as long as the socket.
            rid = self.request_id
            log_access(self._scope, status, self._started, principals, rid, correlation_id=rid)
