"""Health checks and the small HTTP app every non-gateway service serves on its own port.

`/livez` says only that the process's event loop runs: container liveness checks use it, so a
database or Redis failover never makes the orchestrator kill every task at once. `/health`
checks PostgreSQL and Redis: load balancers and rollouts use it (CONTRACT.md section 9).

The checks of `/health` never use the service's shared pools: each round opens a PostgreSQL
connection and a Redis connection of its own (the pool's connection parameters, the client's
connection class) and closes them, each bounded by `CHECK_TIMEOUT_S`, connecting included. So a
saturated pool does not make the probe queue behind work (nor the probe take a connection that
work is waiting for), and a failover answers 503 within the timeout, from a connection made to
the endpoint as it resolves now. One round runs at a time per process, and a round's result
answers the requests of the next `REUSE_S` as well: however many probes arrive (every load
balancer node checks, and `/health` of the gateway is public), a process holds at most
`PROBE_CONNECTIONS` PostgreSQL connection outside its pool and opens at most about one a second.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from libs.runtime.redis_client import probe_connection

CHECK_TIMEOUT_S = 2.0
REUSE_S = 1.0
# PostgreSQL connections `/health` holds outside the pool, at most, at any moment.
PROBE_CONNECTIONS = 1

HealthResult = tuple[int, dict[str, Any]]
METRICS_PATH = b"/metrics"


async def _resolved(value: Any) -> Any:
    """A pool's conninfo or kwargs: as given, or what its (sync or async) callable returns."""
    if callable(value):
        value = value()
    if inspect.isawaitable(value):
        value = await value
    return value


async def check_postgres(pool: AsyncConnectionPool[Any], timeout_s: float = CHECK_TIMEOUT_S) -> str:
    """`SELECT 1` on a new connection made with `pool`'s parameters (never one of its own)."""
    try:
        async with asyncio.timeout(timeout_s):
            conninfo = await _resolved(pool.conninfo) or ""
            kwargs = dict(await _resolved(pool.kwargs) or {})
            kwargs["connect_timeout"] = max(2, math.ceil(timeout_s))  # libpq's least
            connect = pool.connection_class.connect
            async with await connect(conninfo, **kwargs) as conn:
                await conn.execute("SELECT 1")
    except Exception as e:  # every failure is reported, none raised
        return f"failing: {type(e).__name__}"
    return "ok"


async def check_redis(redis: Redis, timeout_s: float = CHECK_TIMEOUT_S) -> str:
    """`PING` on a new connection made like `redis`'s (never one from its pool)."""
    # Made as the pool makes its connections, but not counted in, nor lent by, the pool (on a
    # cluster: one node's).
    connection = probe_connection(redis)
    connection.retry = Retry(NoBackoff(), 0)
    connection.socket_connect_timeout = connection.socket_timeout = timeout_s
    try:
        async with asyncio.timeout(timeout_s):
            await connection.connect()  # type: ignore[no-untyped-call]
            await connection.send_command("PING")
            await connection.read_response()
    except Exception as e:  # every failure is reported, none raised
        return f"failing: {type(e).__name__}"
    finally:
        await connection.disconnect(nowait=True)
    return "ok"


async def health_body(
    pool: AsyncConnectionPool[Any], redis: Redis, timeout_s: float = CHECK_TIMEOUT_S
) -> HealthResult:
    postgres, redis_state = await asyncio.gather(
        check_postgres(pool, timeout_s), check_redis(redis, timeout_s)
    )
    checks = {"postgres": postgres, "redis": redis_state}
    healthy = all(v == "ok" for v in checks.values())
    return (200 if healthy else 503), {
        "status": "ok" if healthy else "unavailable",
        "checks": checks,
    }


class HealthProbe:
    """`/health`'s answer: one round of checks at a time, its result reused for `reuse_s`."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        redis: Redis,
        *,
        timeout_s: float = CHECK_TIMEOUT_S,
        reuse_s: float = REUSE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool, self._redis, self._timeout_s = pool, redis, timeout_s
        self._reuse_s, self._clock = reuse_s, clock
        self._round: asyncio.Task[HealthResult] | None = None
        self._last: tuple[float, HealthResult] | None = None

    async def result(self) -> HealthResult:
        """The latest round's result if it started under `reuse_s` ago, else the next one's."""
        if self._last is not None and self._clock() - self._last[0] < self._reuse_s:
            return self._last[1]
        if self._round is None:
            self._round = asyncio.create_task(self._run())
        # A caller that gives up (its client went away) leaves the round to finish for others.
        return await asyncio.shield(self._round)

    async def _run(self) -> HealthResult:
        started = self._clock()
        try:
            result = await health_body(self._pool, self._redis, self._timeout_s)
        finally:
            self._round = None
        self._last = (started, result)
        return result


async def livez(_request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def health_routes(
    pool: AsyncConnectionPool[Any], redis: Redis, *, timeout_s: float = CHECK_TIMEOUT_S
) -> list[Route]:
    probe = HealthProbe(pool, redis, timeout_s=timeout_s)

    async def health(_request: Request) -> Response:
        status, body = await probe.result()
        return JSONResponse(body, status_code=status)

    async def metrics(request: Request) -> Response:
        # Only the path spelled out: the load balancer blocks `/metrics` by its text, and a
        # percent-encoded spelling (`/%6Detrics`) would pass it and be decoded into this route.
        if request.scope.get("raw_path", METRICS_PATH) != METRICS_PATH:
            raise HTTPException(404)
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return [Route("/livez", livez), Route("/health", health), Route("/metrics", metrics)]


def health_app(
    pool: AsyncConnectionPool[Any], redis: Redis, *, timeout_s: float = CHECK_TIMEOUT_S
) -> Starlette:
    return Starlette(routes=health_routes(pool, redis, timeout_s=timeout_s))
