"""The gateway's Starlette application: health, metrics, the /v1 API and its WebSocket."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager

import redis.exceptions
import structlog
from starlette.applications import Starlette
from starlette.middleware import Middleware

from libs.events.client import CommandClient
from libs.events.outcomes import abandoner
from libs.runtime.health import health_routes
from libs.runtime.service import Resources
from services.gateway.asyncapi import asyncapi_route
from services.gateway.auth import KeySource, SettingsKeys
from services.gateway.auth_failures import AuthFailureLimit
from services.gateway.config import GatewayConfig, config_from_environ
from services.gateway.docs_page import docs_routes
from services.gateway.errors import EXCEPTION_HANDLERS
from services.gateway.http import CommandSender, Deps
from services.gateway.middleware import RequestContext
from services.gateway.ratelimit import SharedLimiter
from services.gateway.realtime.endpoint import realtime_for, socket_route
from services.gateway.realtime.hub import Hub
from services.gateway.routes import api_routes
from services.gateway.screens import screen_routes
from services.gateway.truck_requests import TruckRequestIndex

log = structlog.get_logger(__name__)

RECONNECT_S = 1.0
Lifespan = Callable[[Starlette], AbstractAsyncContextManager[None]]


def create_app(
    resources: Resources,
    *,
    keys: KeySource | None = None,
    config: GatewayConfig | None = None,
    environ: Mapping[str, str] | None = None,
) -> Starlette:
    """The gateway app. `keys` decides which tokens are valid (default: the settings' keys;
    a `libs.runtime.keyring.JwtKeyring` fits too); `config` defaults to the environment's."""
    config = config or config_from_environ(os.environ if environ is None else environ)
    prefix = resources.settings.redis_key_prefix
    commands = CommandClient(
        resources.redis,
        prefix,
        resources.instance,
        timeout_s=config.command_timeout_s,
        abandon=abandoner(resources.pool),
    )
    deps = build_deps(resources, commands, keys or SettingsKeys(resources.settings), config)
    realtime = realtime_for(resources)
    app = Starlette(
        routes=[
            *health_routes(resources.pool, resources.redis),
            *api_routes(deps),
            socket_route(deps, realtime),
            *docs_routes(),  # GET /openapi.json and /docs (Swagger UI, no CDN)
            asyncapi_route(),  # GET /asyncapi.json: the WebSocket reference
            *screen_routes(),  # the live screens under /app/
        ],
        middleware=[
            Middleware(RequestContext),
            Middleware(AuthFailureLimit, limiter=auth_failure_limiter(resources, config)),
        ],
        exception_handlers=EXCEPTION_HANDLERS.as_mapping(),
        lifespan=gateway_lifespan(commands, realtime.hub),
    )
    # A path that names no route is 404, trailing slash included: Starlette's default answers a
    # 307 whose Location is built from the Host header (an open redirect).
    app.router.redirect_slashes = False
    return app


def build_deps(
    resources: Resources, commands: CommandSender, keys: KeySource, config: GatewayConfig
) -> Deps:
    return Deps(
        pool=resources.pool,
        redis=resources.redis,
        prefix=resources.settings.redis_key_prefix,
        commands=commands,
        keys=keys,
        limiter=SharedLimiter(
            resources.redis,
            f"{resources.settings.redis_key_prefix}ratelimit:caller:",
            config.rate_limit_per_minute,
        ),
        config=config,
        truck_requests=TruckRequestIndex(),
    )


def auth_failure_limiter(resources: Resources, config: GatewayConfig) -> SharedLimiter:
    """Failed authentications per client address, shared by every gateway instance."""
    prefix = f"{resources.settings.redis_key_prefix}ratelimit:auth-failures:"
    return SharedLimiter(resources.redis, prefix, config.auth_failures_per_minute)


def gateway_lifespan(commands: CommandClient, hub: Hub) -> Lifespan:
    """The command client's lifespan, and the WebSocket hub running for as long."""
    with_commands = commands_lifespan(commands)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with with_commands(app), hub.running():
            yield

    return lifespan


def commands_lifespan(commands: CommandClient) -> Lifespan:
    """Start the command client with the app (without waiting for Redis); close it at the end."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        starting = asyncio.create_task(start_commands(commands))
        try:
            yield
        finally:
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            await commands.close()

    return lifespan


async def start_commands(commands: CommandClient) -> None:
    """Subscribe to this instance's reply channel, retrying while Redis is unreachable."""
    while True:
        try:
            await commands.start()
        except (redis.exceptions.RedisError, OSError) as e:
            log.warning("reply_channel_unavailable", error=str(e))
            await asyncio.sleep(RECONNECT_S)
        else:
            return
