"""`/health` checks PostgreSQL and Redis on connections of its own, within a short timeout
(issue 13, item 2): a saturated pool or a dependency that stopped answering makes it neither
hang nor queue behind work, and it never takes a pooled connection."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from libs.runtime.health import CHECK_TIMEOUT_S, REUSE_S, HealthProbe, health_app
from libs.runtime.postgres import conninfo
from libs.runtime.redis_client import redis_pool

# A failing check answers within its timeout; this much more covers the HTTP round trip. The
# failing checks run on a shorter timeout than the services' `CHECK_TIMEOUT_S`: the bound is the
# one the probe is given, whichever it is.
MARGIN_S = 0.5
TIMEOUT_S = 0.5


class BlackHole:
    """A TCP listener on loopback that accepts connections and never answers a byte: a server
    that stopped responding (a failover in progress, a black-holed route) as a client sees it."""

    def __init__(self) -> None:
        self.accepted = 0
        self.open = 0
        self.port = 0
        self._writers: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open += 1
        self._writers.append(writer)
        try:
            await reader.read()  # until the client closes its end
        finally:
            self.open -= 1
            writer.close()

    def close_all(self) -> None:
        for writer in self._writers:
            writer.close()


@pytest.fixture
async def black_hole() -> AsyncIterator[BlackHole]:
    hole = BlackHole()
    server = await asyncio.start_server(hole.handle, "127.0.0.1", 0)
    hole.port = server.sockets[0].getsockname()[1]
    try:
        yield hole
    finally:
        hole.close_all()
        server.close()
        await server.wait_closed()


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[AsyncConnectionPool[Any]]:
    """A service-like pool of one connection to the test database, open and filled."""
    opened: AsyncConnectionPool[Any] = AsyncConnectionPool(
        conninfo(database_url, "weelo-test-health"),
        min_size=1,
        max_size=1,
        open=False,
        kwargs={"autocommit": True},
    )
    await opened.open(wait=True)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def shared_redis(redis_url: str) -> AsyncIterator[Redis]:
    """A client on the services' own kind of pool (`redis_pool`), here of one connection."""
    shared = redis_pool(redis_url)
    shared.max_connections = 1
    client = Redis(connection_pool=shared)
    try:
        yield client
    finally:
        await client.aclose()


def unreachable_pool(port: int) -> AsyncConnectionPool[Any]:
    """A pool whose server is the black hole on `port` (never opened: the probe must not care)."""
    return AsyncConnectionPool(
        f"postgresql://postgres@127.0.0.1:{port}/weelo",
        open=False,
        kwargs={"autocommit": True},
    )


async def get_health(app: Any, requests: int = 1) -> tuple[float, list[httpx.Response]]:
    """`requests` concurrent GET /health on `app`; how long the slowest took, and the answers."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://probe") as client:
        started = time.monotonic()
        answers = await asyncio.gather(*(client.get("/health") for _ in range(requests)))
    return time.monotonic() - started, list(answers)


async def wait_until(condition: Callable[[], bool], within_s: float) -> bool:
    """Whether `condition` holds within `within_s` (polled every 10 ms)."""
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def test_health_is_200_at_once_while_every_pooled_connection_is_checked_out(
    pool: AsyncConnectionPool[Any], shared_redis: Redis
) -> None:
    """With the PostgreSQL pool and the Redis pool both exhausted, /health still answers 200
    well within its timeout, and it asked the PostgreSQL pool for nothing."""
    held_pg = await pool.getconn()
    held_redis = await shared_redis.connection_pool.get_connection()
    requests_before = pool.get_stats().get("requests_num", 0)
    try:
        took, (answer,) = await get_health(health_app(pool, shared_redis))
    finally:
        await shared_redis.connection_pool.release(held_redis)
        await pool.putconn(held_pg)
    assert (answer.status_code, answer.json()["checks"]) == (200, {"postgres": "ok", "redis": "ok"})
    assert took < CHECK_TIMEOUT_S
    assert pool.get_stats().get("requests_num", 0) == requests_before


async def test_health_is_503_within_the_timeout_when_postgresql_stops_answering(
    black_hole: BlackHole, shared_redis: Redis
) -> None:
    """PostgreSQL accepting connections but answering nothing: 503 naming postgres (redis ok)
    within the check's timeout, and the connection given up on is closed, not left behind."""
    took, (answer,) = await get_health(
        health_app(unreachable_pool(black_hole.port), shared_redis, timeout_s=TIMEOUT_S)
    )
    assert answer.status_code == 503
    assert answer.json()["checks"]["postgres"].startswith("failing: ")
    assert answer.json()["checks"]["redis"] == "ok"
    assert took < TIMEOUT_S + MARGIN_S
    assert black_hole.accepted == 1
    assert await wait_until(lambda: black_hole.open == 0, within_s=2.0)


async def test_health_is_503_within_the_timeout_when_redis_stops_answering(
    black_hole: BlackHole, pool: AsyncConnectionPool[Any]
) -> None:
    """Redis accepting connections but answering nothing: 503 naming redis within the timeout."""
    silent = Redis(connection_pool=redis_pool(f"redis://127.0.0.1:{black_hole.port}/0"))
    try:
        took, (answer,) = await get_health(health_app(pool, silent, timeout_s=TIMEOUT_S))
    finally:
        await silent.aclose()
    assert answer.status_code == 503
    assert answer.json()["checks"]["postgres"] == "ok"
    assert answer.json()["checks"]["redis"].startswith("failing: ")
    assert took < TIMEOUT_S + MARGIN_S


async def test_concurrent_probes_share_one_round_and_one_connection(
    black_hole: BlackHole, shared_redis: Redis
) -> None:
    """Twenty /health requests at once make one round of checks: one PostgreSQL connection
    attempt, however many probes arrive, and every one of them answered within the timeout."""
    app = health_app(unreachable_pool(black_hole.port), shared_redis, timeout_s=TIMEOUT_S)
    took, answers = await get_health(app, requests=20)
    assert [a.status_code for a in answers] == [503] * 20
    assert took < TIMEOUT_S + MARGIN_S
    assert black_hole.accepted == 1


async def test_a_round_answers_for_reuse_s_then_the_next_probe_checks_again(
    black_hole: BlackHole, shared_redis: Redis
) -> None:
    """A round's result answers the probes of the next REUSE_S; a probe after that checks anew."""
    now = [100.0]
    probe = HealthProbe(
        unreachable_pool(black_hole.port), shared_redis, timeout_s=0.3, clock=lambda: now[0]
    )
    first = await probe.result()
    now[0] += REUSE_S / 2
    again = await probe.result()
    assert (first[0], again, black_hole.accepted) == (503, first, 1)
    now[0] += REUSE_S
    await probe.result()
    assert black_hole.accepted == 2
