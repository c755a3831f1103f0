"""The lifecycle every service shares: open pools, run tasks and an HTTP server, stop cleanly.

A service is a `ServiceSpec`: its name, the HTTP app it serves and the background tasks it runs
(consumer-group runners and the like). `run_service` owns everything with I/O: it creates the
PostgreSQL pool and the Redis client, runs the outbox relay, stream trimming, bookkeeping pruning
and the guard against silent pipelined transactions (`silent.py`) beside the service's own
tasks, and on SIGTERM or SIGINT lets every task finish the message in hand before closing the
pools.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import structlog
import uvicorn
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.types import ASGIApp

from libs.events.relay import OutboxRelay
from libs.events.streams import dead_letter_stream
from libs.events.trim import grouped_streams, trim_forever
from libs.runtime.draining import DrainingServer
from libs.runtime.health import PROBE_CONNECTIONS, health_app
from libs.runtime.housekeeping import prune_forever
from libs.runtime.http_head import head_limits
from libs.runtime.pool_metrics import watch_pool
from libs.runtime.postgres import POOL_MIN_SIZE, application_name, conninfo, pool_max_size
from libs.runtime.redis_client import is_cluster, redis_client
from libs.runtime.settings import PortInUse, Settings
from libs.runtime.silent import end_silent_forever
from libs.runtime.ws_handshake import FinishedRefusals

log = structlog.get_logger(__name__)

SHUTDOWN_TIMEOUT_S = 20.0
# The outbox relay every service runs (relay.py) opens connections of its own, outside the pool:
# one that listens for new outbox rows, one that publishes them, one more while it vacuums. The
# `/health` probe's checks hold one more (`health.PROBE_CONNECTIONS`): all count in DB_POOL_SIZE.
RELAY_CONNECTIONS = 3


@dataclass(frozen=True)
class Resources:
    """What a service's handlers may use; created only by `open_resources`."""

    settings: Settings
    pool: AsyncConnectionPool[Any]
    redis: Redis
    instance: str
    service: str
    conninfo: str  # for a connection of a role's own: keepalives, this process's name


Task = Callable[[Resources, asyncio.Event], Coroutine[Any, Any, None]]
AppFactory = Callable[[Resources], ASGIApp]


def default_app(resources: Resources) -> ASGIApp:
    return health_app(resources.pool, resources.redis)


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    default_port: int
    tasks: tuple[Task, ...] = ()
    app: AppFactory = default_app
    port_setting: Callable[[Settings], int | None] = field(default=lambda s: s.health_port)
    # PostgreSQL connections the service's own tasks open outside the pool (a leader's lock).
    dedicated_connections: int = 0

    def pool_size(self, settings: Settings) -> int:
        """The pool's share of `DB_POOL_SIZE`; `SettingsError` when nothing is left for it."""
        dedicated = RELAY_CONNECTIONS + PROBE_CONNECTIONS + self.dedicated_connections
        return pool_max_size(settings.db_pool_size, dedicated, self.name)


@contextlib.asynccontextmanager
async def open_resources(
    settings: Settings, service: str, instance: str, pool_size: int
) -> AsyncIterator[Resources]:
    """The pool (at most `pool_size` connections) and the Redis client of one service process."""
    database = conninfo(settings.database_url, application_name(service))
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        database,
        min_size=min(POOL_MIN_SIZE, pool_size),
        max_size=pool_size,
        open=False,
        name=service,
        kwargs={"autocommit": True},
    )
    await pool.open(wait=False)
    watch_pool(pool)
    redis = redis_client(settings.redis_url)
    await _know_the_cluster(redis, service)
    try:
        yield Resources(settings, pool, redis, instance, service, database)
    finally:
        await redis.aclose()
        await pool.close()


async def _know_the_cluster(redis: Redis, service: str) -> None:
    """A cluster client learns the nodes and slots before the service's first command (its
    pub/sub picks a node by slot); if the cluster does not answer now, it tries again at the
    first command instead."""
    if is_cluster(redis):
        try:
            await redis.initialize()
        except (RedisError, OSError) as e:
            log.warning("redis_cluster_unavailable", service=service, error=str(e))


def bind_socket(
    host: str, port: int, explicit: bool, variable: str = "HEALTH_PORT"
) -> socket.socket:
    """Bind `port`; when it was only a default and is taken, bind a free one instead. An explicit
    port (`variable`) that is taken is `PortInUse`, which names both."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        if explicit or e.errno != errno.EADDRINUSE:
            sock.close()
            if e.errno == errno.EADDRINUSE:
                raise PortInUse(port, variable, host) from None
            raise
        sock.bind((host, 0))
    sock.set_inheritable(True)
    return sock


class _Server(DrainingServer):
    """uvicorn without its own signal handling (the service's stop event decides), and with a
    shutdown that answers every connection it has taken (draining.py)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


def install_stop_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()

    def on_signal(signame: str) -> None:
        if stop.is_set():
            log.warning("forced_exit", signal=signame)
            os._exit(130)
        log.info("stopping", signal=signame)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig.name)


async def run_service(spec: ServiceSpec, settings: Settings, instance: str) -> int:
    """Run `spec` until SIGTERM or SIGINT, then stop cleanly; non-zero if a task crashed."""
    pool_size = spec.pool_size(settings)
    stop = asyncio.Event()
    install_stop_signals(stop)
    async with open_resources(settings, spec.name, instance, pool_size) as resources:
        explicit = spec.port_setting(settings)
        variable = "GATEWAY_PORT" if spec.name == "gateway" else "HEALTH_PORT"
        sock = bind_socket(
            settings.gateway_host, explicit or spec.default_port, explicit is not None, variable
        )
        server = _Server(
            uvicorn.Config(
                spec.app(resources),
                # Bounded request heads and answered refusals (http_head.py, ws_handshake.py).
                http=head_limits(settings.http_header_timeout_seconds),
                ws=FinishedRefusals,
                log_config=None,
                access_log=False,
                lifespan="on",
                timeout_graceful_shutdown=10,
                # Longer than the load balancer's idle timeout, so that it never reuses a
                # connection the server is closing under it (a reset, a 502).
                timeout_keep_alive=settings.http_keepalive_seconds,
                # permessage-deflate without context takeover: no zlib context lives on an
                # idle socket (ws_deflate.py, installed by FinishedRefusals).
                ws_per_message_deflate=True,
                ws_max_size=4096,  # a client frame over 4 KiB closes with 1009 (CONTRACT.md 7)
                # X-Forwarded-For only from the proxies named (uvicorn would trust loopback).
                proxy_headers=bool(settings.forwarded_allow_ips),
                forwarded_allow_ips=settings.forwarded_allow_ips,
            )
        )
        port = sock.getsockname()[1]
        log.info("service_started", port=port, pid=os.getpid(), db_pool_size=pool_size)
        tasks = [
            asyncio.create_task(t(resources, stop), name=t.__name__.lstrip("_"))
            for t in (*_shared_tasks(), *spec.tasks)
        ]
        serving = asyncio.create_task(server.serve(sockets=[sock]), name="http")
        crashed = await _until_stopped(stop, serving, tasks)
        asked = time.monotonic()
        server.should_exit = True
        await _finish(tasks, serving)
        tasks_s = time.monotonic() - asked
    # How long each part of the stop took: the tasks and server, then the pools' closing.
    log.info(
        "service_stopped",
        crashed=crashed,
        tasks_s=round(tasks_s, 3),
        pools_s=round(time.monotonic() - asked - tasks_s, 3),
    )
    return 1 if crashed else 0


async def _until_stopped(
    stop: asyncio.Event, serving: asyncio.Task[None], tasks: list[asyncio.Task[None]]
) -> bool:
    """Wait for the stop signal; a task or the server ending early also stops the service.

    True when something ended before it was asked to (a crash).
    """
    stopping = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([stopping, serving, *tasks], return_when=asyncio.FIRST_COMPLETED)
    crashed = stopping not in done
    for task in done - {stopping}:
        error = task.exception()
        log.error("task_ended_early", task=task.get_name(), error=repr(error) if error else None)
    stop.set()
    stopping.cancel()
    return crashed


async def _finish(tasks: list[asyncio.Task[None]], serving: asyncio.Task[None]) -> None:
    pending = [*tasks, serving]
    _, late = await asyncio.wait(pending, timeout=SHUTDOWN_TIMEOUT_S)
    for task in late:
        log.warning("task_cancelled_at_shutdown", task=task.get_name())
        task.cancel()
    await asyncio.gather(*late, return_exceptions=True)


def _shared_tasks() -> tuple[Task, ...]:
    return (_relay, _trimmer, _housekeeping, _silent_guard)


async def _housekeeping(resources: Resources, stop: asyncio.Event) -> None:
    await prune_forever(resources.pool, stop)


async def _silent_guard(resources: Resources, stop: asyncio.Event) -> None:
    await end_silent_forever(resources.pool, stop)


async def _relay(resources: Resources, stop: asyncio.Event) -> None:
    relay = OutboxRelay(
        resources.conninfo,
        resources.redis,
        resources.settings.redis_key_prefix,
        pool=resources.pool,
        holder=resources.instance,
    )
    await relay.run(stop)


async def _trimmer(resources: Resources, stop: asyncio.Event) -> None:
    prefix = resources.settings.redis_key_prefix
    await trim_forever(
        resources.redis, grouped_streams(prefix), stop, dead_letter=dead_letter_stream(prefix)
    )
