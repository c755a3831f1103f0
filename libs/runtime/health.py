"""Health checks and the small HTTP app every non-gateway service serves on its own port.

`/livez` says only that the process's event loop runs: container liveness checks use it, so a
database or Redis failover never makes the orchestrator kill every task at once. `/health`
checks PostgreSQL and Redis: load balancers and rollouts use it (CONTRACT.md section 9).
"""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

CHECK_TIMEOUT_S = 2.0


async def check_postgres(pool: AsyncConnectionPool[Any]) -> str:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            async with pool.connection(timeout=CHECK_TIMEOUT_S) as conn:
                await conn.execute("SELECT 1")
    except Exception as e:  # every failure is reported, none raised
        return f"failing: {type(e).__name__}"
    return "ok"


async def check_redis(redis: Redis) -> str:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            await redis.ping()
    except Exception as e:  # every failure is reported, none raised
        return f"failing: {type(e).__name__}"
    return "ok"


async def health_body(pool: AsyncConnectionPool[Any], redis: Redis) -> tuple[int, dict[str, Any]]:
    postgres, redis_state = await asyncio.gather(check_postgres(pool), check_redis(redis))
    checks = {"postgres": postgres, "redis": redis_state}
    healthy = all(v == "ok" for v in checks.values())
    return (200 if healthy else 503), {
        "status": "ok" if healthy else "unavailable",
        "checks": checks,
    }


async def livez(_request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def health_routes(pool: AsyncConnectionPool[Any], redis: Redis) -> list[Route]:
    async def health(_request: Request) -> Response:
        status, body = await health_body(pool, redis)
        return JSONResponse(body, status_code=status)

    async def metrics(_request: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return [Route("/livez", livez), Route("/health", health), Route("/metrics", metrics)]


def health_app(pool: AsyncConnectionPool[Any], redis: Redis) -> Starlette:
    return Starlette(routes=health_routes(pool, redis))
