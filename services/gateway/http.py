"""What every API handler gets and the wrapper that authenticates, limits and reads the body."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

import msgspec
import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from redis.asyncio import Redis
from starlette.requests import Request
from starlette.responses import Response

from libs.events.commands import AnyCommand, Reply
from libs.runtime.tokens import Principal, Role
from services.gateway.auth import KeySource, bearer_principal, require_role
from services.gateway.config import GatewayConfig
from services.gateway.errors import ApiError, ChangedButUnread, internal, not_found, refused
from services.gateway.ratelimit import SharedLimiter, rate_limited
from services.gateway.truck_requests import TruckRequestIndex

ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
DB_TIMEOUT_S = 5.0
# How long a read after the request's change may be tried again while the database fails it.
CHANGED_READ_S = 15.0
T = TypeVar("T")
Conn = psycopg.AsyncConnection[Any]
log = structlog.get_logger(__name__)


class CommandSender(Protocol):
    async def send(
        self,
        command: AnyCommand,
        *,
        command_id: str | None = None,
        correlation_id: str | None = None,
    ) -> Reply: ...


@dataclass(frozen=True)
class Deps:
    """Everything handlers use; built once by `create_app`."""

    pool: AsyncConnectionPool[Any]
    redis: Redis
    prefix: str
    commands: CommandSender
    keys: KeySource
    limiter: SharedLimiter
    config: GatewayConfig
    truck_requests: TruckRequestIndex


@dataclass(frozen=True)
class Call:
    """One authenticated API request."""

    request: Request
    principal: Principal
    deps: Deps
    body: bytes
    correlation_id: str
    command_id: str | None = None

    @property
    def caller(self) -> str:
        return f"{self.principal.role}:{self.principal.sub}"

    def path_id(self, name: str) -> str:
        """The id in path parameter `name`; a malformed one names nothing (404)."""
        value = str(self.request.path_params[name])
        if not 1 <= len(value) <= 64 or not set(value) <= _ID_CHARS:
            raise not_found()
        return value

    def connection(self) -> AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]:
        return self.deps.pool.connection(timeout=DB_TIMEOUT_S)

    async def read(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        """`fn` on a pooled connection. Once this request made its change, a database failing
        the read is asked again (for up to `CHANGED_READ_S`) rather than answered 503, which
        would say that nothing was changed."""
        deadline = time.monotonic() + CHANGED_READ_S
        while True:
            try:
                async with self.connection() as conn:
                    return await fn(conn)
            except (psycopg.OperationalError, PoolTimeout) as e:
                if not getattr(self.request.state, "changed", False):
                    raise
                if time.monotonic() >= deadline:
                    raise ChangedButUnread from e
            await asyncio.sleep(0.2)

    async def execute(self, command: AnyCommand) -> Reply:
        """Send `command` and await its reply; a refusal becomes its API error."""
        reply = await self.deps.commands.send(
            command, command_id=self.command_id, correlation_id=self.correlation_id
        )
        if reply.failure is not None:
            raise refused(reply.failure)
        self.request.state.changed = True
        return reply

    def with_command_id(self, command_id: str) -> Call:
        return replace(self, command_id=command_id)


def result_of(reply: Reply) -> bytes:
    """The JSON of an accepted command's result. A reply without one (`null`, the default when
    a service sent none) is a service bug: 500 `internal`, never a 200 with a `null` body."""
    raw = bytes(reply.result)
    if raw.strip() in (b"", b"null"):
        log.error("command_reply_without_result", command_id=reply.command_id)
        raise internal("The service returned no result")
    return raw


Handler = Callable[[Call], Awaitable[Response]]
Endpoint = Callable[[Request], Awaitable[Response]]


def json_response(
    value: object, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    body = value if isinstance(value, bytes) else msgspec.json.encode(value)
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"The request body exceeds {limit} bytes")


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body; 413 when its declared or streamed size passes `limit`."""
    declared = request.headers.get("content-length", "0")
    if not declared.isdigit() or int(declared) > limit:
        raise too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def correlation_id(request: Request) -> str:
    found = getattr(request.state, "correlation_id", None)
    return found if isinstance(found, str) else uuid.uuid4().hex


async def rate_limit(deps: Deps, caller: str) -> None:
    """429 when `caller` is past its limit (shared by every gateway instance)."""
    wait_s = await deps.limiter.take(caller)
    if wait_s > 0:
        raise rate_limited(wait_s)


def endpoint(
    deps: Deps, roles: Sequence[Role], handler: Handler, *, wrap: Callable[[Handler], Handler]
) -> Endpoint:
    """A Starlette endpoint running `handler` for callers with one of `roles`."""
    wrapped = wrap(handler)

    async def run(request: Request) -> Response:
        principal = bearer_principal(request, deps.keys)
        require_role(principal, roles)
        await rate_limit(deps, f"{principal.role}:{principal.sub}")
        body = await read_body(request, deps.config.max_body_bytes)
        call = Call(request, principal, deps, body, correlation_id(request))
        return await wrapped(call)

    return run
