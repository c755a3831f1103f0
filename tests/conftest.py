"""Real PostgreSQL and Redis for the suite.

Found in this order: `TEST_DATABASE_URL` / `TEST_REDIS_URL`; else a Docker engine through
testcontainers; else the embedded servers `weelo up` uses. Each run gets its own database and
each test its own `REDIS_KEY_PREFIX`, so runs and tests never see each other's data.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from redis.asyncio import Redis

from libs.runtime.probes import scratch_database
from tests.keys import forget_keys
from tests.processes import DB_POOL_SIZE

RUN = uuid.uuid4().hex[:8]
_prefixes = itertools.count()
_databases = itertools.count()


def _docker_available() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env().ping()
    except Exception:
        return False
    return True


@pytest.fixture(scope="session")
def _servers() -> Iterator[tuple[str, str]]:
    pg, redis = os.environ.get("TEST_DATABASE_URL"), os.environ.get("TEST_REDIS_URL")
    with contextlib.ExitStack() as stack:
        if not (pg and redis) and _docker_available():
            from testcontainers.postgres import PostgresContainer
            from testcontainers.redis import RedisContainer

            if not pg:
                pg = stack.enter_context(PostgresContainer("postgres:16")).get_connection_url(
                    driver=None
                )
            if not redis:
                container = stack.enter_context(RedisContainer("redis:7"))
                redis = f"redis://{container.get_container_host_ip()}:{container.get_exposed_port(6379)}/0"
        if not (pg and redis):
            from libs.runtime.embedded import embedded_postgres, embedded_redis

            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="weelo-test-")))
            pg = pg or stack.enter_context(embedded_postgres(root / "postgres"))
            redis = redis or stack.enter_context(embedded_redis(root / "redis"))
        yield pg, redis


def fresh_database(server_url: str) -> contextlib.AbstractContextManager[str]:
    """A new migrated database on the server, dropped afterwards."""
    return scratch_database(server_url, f"weelo_test_{RUN}")


@pytest.fixture(scope="session")
def database_url(_servers: tuple[str, str]) -> Iterator[str]:
    """A fresh, migrated database for this test run.

    Test modules that run services override it with `module_database`, since services of one
    database act on all of its broadcasts (a timer expires any that is due).
    """
    with fresh_database(_servers[0]) as url:
        yield url


@pytest.fixture(scope="module")
def module_database(_servers: tuple[str, str]) -> Iterator[str]:
    """A fresh, migrated database for one test module."""
    with fresh_database(_servers[0]) as url:
        yield url


@pytest.fixture(scope="session")
def redis_url(_servers: tuple[str, str]) -> str:
    return _servers[1]


@pytest.fixture(scope="session")
def _sweep_run_keys(redis_url: str) -> Iterator[None]:
    """At the end of the run, delete every key under this run's prefixes: service processes
    write under prefixes that no `redis` fixture cleans up after its test."""
    yield
    forget_keys(redis_url, f"test-{RUN}-")


@pytest.fixture
def prefix(_sweep_run_keys: None) -> str:
    """A Redis key prefix no other test or run uses."""
    return f"test-{RUN}-{next(_prefixes)}:"


@pytest.fixture
async def redis(redis_url: str, prefix: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[psycopg.AsyncConnection[tuple[object, ...]]]:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as c:
        yield c


@pytest.fixture
def service_env(database_url: str, redis_url: str, prefix: str, tmp_path: Path) -> dict[str, str]:
    """Environment for running `weelo` commands as real processes against the test servers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEST_", "PYTEST_"))}
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        REDIS_KEY_PREFIX=prefix,
        WEELO_STATE_DIR=str(tmp_path / "state"),
        JWT_SECRET="test-access-secret-of-thirty-two-bytes-" + RUN,
        JWT_REFRESH_SECRET="test-refresh-secret-of-thirty-two-bytes-" + RUN,
        DB_POOL_SIZE=DB_POOL_SIZE,
    )
    return env


@pytest.fixture(scope="module")
def module_prefix(_sweep_run_keys: None) -> str:
    """A Redis key prefix shared by one test module's service processes."""
    return f"test-{RUN}-m{next(_prefixes)}:"


@pytest.fixture(scope="module")
def service_env_module(
    database_url: str, redis_url: str, module_prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """Like `service_env`, for service processes shared by a whole test module."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEST_", "PYTEST_"))}
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        REDIS_KEY_PREFIX=module_prefix,
        WEELO_STATE_DIR=str(tmp_path_factory.mktemp("state")),
        JWT_SECRET="test-access-secret-of-thirty-two-bytes-" + RUN,
        JWT_REFRESH_SECRET="test-refresh-secret-of-thirty-two-bytes-" + RUN,
        DB_POOL_SIZE=DB_POOL_SIZE,
    )
    return env
