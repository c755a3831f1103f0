"""One INFO line per request, `access`: method, route template, status, duration, principal and
request id (docs/operations.md, "Logs"). uvicorn's own access log stays off (`service.py`).

- `route` is the route's template (`/v1/broadcasts/{broadcast_id}`), `unmatched` for a path no
  route names: never the raw path, whose ids and query string (`?token=`) stay out of the log.
- `principal` is `{"role", "sub"}` of the token the request authenticated with (an access token,
  or a refresh token at `/v1/auth/refresh`), taken from `tokens.verify` as the route checked it
  (`tokens.recording_principals`); null when none was valid. Never the token.
- `request_id` is the request's correlation id: the caller's `X-Request-ID` when sane, else a new
  one (`request_id`); the same value as the line's `correlation_id`.
- An HTTP request's line is written by `middleware.RequestContext`, outside `AuthFailureLimit`,
  so it shows the status the client got. A WebSocket handshake is one line when it is answered:
  101 when the socket is accepted, the refusal's status otherwise; `duration_ms` is the
  handshake's time, not the socket's life. The socket's endpoint writes it (`HandshakeLog`): a
  middleware of its own wrapped every socket for its whole life, 2.8 KiB per idle socket (32.0
  against 29.2 KiB measured), and even a pass-through layer keeps a frame per socket.
- Probes and scrapes (`/livez`, `/health`, `/metrics`) are logged only when they fail (status
  400 or more): the load balancer and ECS ask every few seconds, their successes say nothing
  the target's health does not, and a failing `/health` line tells why a task left the pool.
"""

from __future__ import annotations

import re
import time
import uuid

import structlog
from starlette.types import Scope

from libs.runtime.tokens import Principal

log = structlog.get_logger(__name__)

REQUEST_ID = "x-request-id"
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id(scope: Scope) -> str:
    """The caller's `X-Request-ID` when it is a sane token, else a new one."""
    for name, value in scope["headers"]:
        if name == REQUEST_ID.encode():
            given = bytes(value).decode("latin-1")
            if _VALID_ID.match(given):
                return given
    return uuid.uuid4().hex


def route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


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
