"""Around every HTTP request: its correlation id (logs, commands, `X-Request-ID` header) and its
latency in the `weelo_gateway_request_seconds` histogram by route template and status."""

from __future__ import annotations

import re
import time
import uuid

import structlog
from prometheus_client import Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID = "x-request-id"
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

REQUEST_SECONDS = Histogram(
    "weelo_gateway_request_seconds",
    "Gateway HTTP request latency by route template, method and status",
    ["route", "method", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)


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


class RequestContext:
    """ASGI middleware: correlation id in, header out, latency recorded."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
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
        try:
            with structlog.contextvars.bound_contextvars(correlation_id=rid):
                await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            labels = (route_template(scope), scope["method"], str(status))
            REQUEST_SECONDS.labels(*labels).observe(elapsed)
