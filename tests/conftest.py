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

from libs.local.probes import scratch_database
from libs.runtime.redis_client import redis_client
from tests.keys import forget_keys
from tests.processes import DB_POOL_SIZE

RUN = uuid.uuid4().hex[:8]
_prefixes = itertools.count()
_databases = itertools.count()

# What a test needs gives it one of three markers (pyproject.toml describes them), read from the
# fixtures it uses, however indirectly: `process` if it starts processes, else `integration` if
# it needs a real server, else `pure`. Every PostgreSQL and Redis fixture reaches `_servers`; the
# deploy tests' Secrets Manager is `moto_endpoint`'s server. The environments made for `weelo`
# processes, the gateway tests' shared `system` and the local Redis Cluster (`cluster_url`, three
# redis-server processes) start processes. A test that starts one in its own code carries
# `@pytest.mark.process`.
SERVER_FIXTURES = frozenset({"_servers", "moto_endpoint"})
PROCESS_FIXTURES = frozenset(
    {"service_env", "service_env_module", "cli_env", "system", "cluster_url"}
)
# The same by hand, as "file::test", for modules being reworked (tests/deploy, tests/realtime):
# markers in the modules themselves once that lands. Processes they run with no fixture to tell:
PROCESS_TESTS = frozenset(
    {
        "test_stack.py::test_cfn_lint_passes_with_the_weelo_rules",
        "test_stack.py::test_weelo_rules_catch_a_weakened_stack",
        "test_container_files.py::test_hadolint_refuses_a_shell_form_entrypoint",
    }
)
# ... and integration tests that wait seconds by design (a lock timeout, a refresh interval):
SLOW_TESTS = frozenset(
    {
        "test_projected.py::test_a_delivery_that_failed_is_delivered_when_run_again",
        "test_projected.py::test_a_record_whose_write_failed_is_written_once_postgresql_takes_it",
        "test_projected.py::"
        "test_an_event_whose_record_was_not_written_is_not_acknowledged_and_reaches_users_once",
        "test_order.py::test_a_failing_projection_holds_back_its_broadcast_and_no_other",
    }
)


# `make test` runs the suite on 4 pytest-xdist workers, scheduled by `LaneScheduling` below:
# each module runs on one worker, so its module fixtures start once, and the gateway tests share
# their session's system on one worker. What starts the most processes at once runs in one lane,
# one module after another, so that with the chaos soak (on a PostgreSQL of its own) and the
# other workers the suite stays within the shared server's max_connections (100): the realtime
# modules, `weelo up`, the key-prefix story and the event store's 24 racing writers each hold
# 20-26 connections, the gateway tests 16-40, any other module at most 15 (measured: 87 at most
# before the store's race joined the lane). The lanes are scheduled first, the longest first.
LANES = (
    ("chaos", ("tests/test_chaos.py",)),
    (
        "processes",
        (
            "tests/realtime/",
            "tests/test_up.py",
            "tests/test_key_prefix.py",
            "tests/events/test_store.py",
        ),
    ),
    ("gateway", ("tests/gateway/",)),
    # The process-level flows again on a local three-master Redis Cluster (tests/cluster/): one
    # system of services, like a realtime module's, beside the lanes above (26 connections).
    ("cluster", ("tests/cluster/", "tests/test_local_cluster.py")),
)


def lane_of(nodeid: str) -> tuple[int, str]:
    """(rank, scope) of a test: its lane of `LANES`, else its own module (after every lane)."""
    path = nodeid.split("::", 1)[0]
    for rank, (lane, prefixes) in enumerate(LANES):
        if path.startswith(prefixes):
            return rank, lane
    return len(LANES), path


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist, when it is loaded
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """Whole lanes and modules to workers, in collection order (`xdist_group` marks cannot do it
    on this pytest: its nodeid suffix no longer takes effect, pytest-xdist issue 1386)."""
    from xdist.scheduler import LoadScopeScheduling

    class LaneScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return lane_of(nodeid)[1]

    return LaneScheduling(config, log)


def kind_of(item: pytest.Item) -> str:
    """`process`, `integration` or `pure`: what the test needs (see above)."""
    fixtures = set(getattr(item, "fixturenames", ()))
    marked = {mark.name for mark in item.iter_markers()}
    if "process" in marked or fixtures & PROCESS_FIXTURES or _named(item) in PROCESS_TESTS:
        return "process"
    if "integration" in marked or fixtures & SERVER_FIXTURES:
        return "integration"
    return "pure"


def _named(item: pytest.Item) -> str:
    return f"{item.path.name}::{getattr(item, 'originalname', item.name)}"


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by these markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        kind = kind_of(item)
        if item.get_closest_marker("pure") and kind != "pure":
            raise pytest.UsageError(f"{item.nodeid} is marked pure but is {kind}")
        item.add_marker(kind)
        if _named(item) in SLOW_TESTS:
            item.add_marker("slow")
    if os.environ.get("PYTEST_XDIST_WORKER"):  # every worker sorts alike: the lanes first
        items.sort(key=lambda item: lane_of(item.nodeid)[0])


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
            from libs.local.embedded import embedded_postgres, embedded_redis

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
    client = redis_client(redis_url)  # as the services make theirs: a cluster's, on a cluster
    await client.initialize()
    yield client
    keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[psycopg.AsyncConnection[tuple[object, ...]]]:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as c:
        yield c


def _service_env(database_url: str, redis_url: str, prefix: str, state: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEST_", "PYTEST_"))}
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        REDIS_KEY_PREFIX=prefix,
        WEELO_STATE_DIR=str(state),
        JWT_SECRET="test-access-secret-of-thirty-two-bytes-" + RUN,
        JWT_REFRESH_SECRET="test-refresh-secret-of-thirty-two-bytes-" + RUN,
        DB_POOL_SIZE=DB_POOL_SIZE,
    )
    return env


@pytest.fixture
def service_env(database_url: str, redis_url: str, prefix: str, tmp_path: Path) -> dict[str, str]:
    """Environment for running `weelo` commands as real processes against the test servers."""
    return _service_env(database_url, redis_url, prefix, tmp_path / "state")


@pytest.fixture(scope="module")
def module_prefix(_sweep_run_keys: None) -> str:
    """A Redis key prefix shared by one test module's service processes."""
    return f"test-{RUN}-m{next(_prefixes)}:"


@pytest.fixture(scope="module")
def service_env_module(
    database_url: str, redis_url: str, module_prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """Like `service_env`, for service processes shared by a whole test module."""
    return _service_env(database_url, redis_url, module_prefix, tmp_path_factory.mktemp("state"))
