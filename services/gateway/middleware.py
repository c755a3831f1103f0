"""Around every HTTP request: its correlation id (logs, commands, `X-Request-ID` header), its
latency in the `weelo_gateway_request_seconds` histogram by route template and status, and its
`access` line (`access_log.py`)."""

from __future__ import annotations

import time
from collections.abc import Awaitable

import structlog
from prometheus_client import Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from libs.runtime.tokens import recording_principals
from services.gateway.access_log import log_access, request_id, route_template

REQUEST_SECONDS = Histogram(
    "weelo_gateway_request_seconds",
    "Gateway HTTP request latency by route template, method and status",
    ["route", "method", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)


class RequestContext:
    """ASGI middleware: correlation id in, header out, latency recorded, for HTTP requests.

    Any other scope (a WebSocket, the lifespan) goes to the app as it came, and this layer keeps
    no frame of its own for it: a pass-through coroutine would live, and weigh, as long as each
    socket does."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if scope["type"] != "http":
            return self.app(scope, receive, send)
        return self._http(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        rid = request_id(scope)
        scope.setdefault("state", {})["correlation_id"] = rid
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        started = time.perf_counter()
        with (
            structlog.contextvars.bound_contextvars(correlation_id=rid),
            recording_principals() as principals,
        ):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                elapsed = time.perf_counter() - started
                labels = (route_template(scope), scope["method"], str(status))
                REQUEST_SECONDS.labels(*labels).observe(elapsed)
                log_access(scope, int(status), started, principals, rid)
