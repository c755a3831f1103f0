"""`DB_POOL_SIZE` bounds every PostgreSQL connection one service process opens (issue 10).

Besides its pool, every service runs the outbox relay (while it holds the relay's lease: its
listening connection, its publishing connection and one while it vacuums) and answers `/health`
on a connection of its own (one round of checks at a time); with a small budget a burst of
probes must still not take a process past it. This module has its own database, so
every other connection to it is one of the process under test.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import httpx
import psycopg
import pytest

from libs.runtime import postgres
from tests.processes import Service, environment, run_weelo, wait_healthy

BURST = 50  # requests in flight at once
BURST_S = 2.0
SAMPLE_S = 0.02
# The least DB_POOL_SIZE each role runs with: relay 3 + the probe's 1 + pool 1 (+ 1 for the
# fan-out's records).
SMALLEST = {"gateway": 5, "broadcast": 5, "fanout": 6}


@pytest.fixture(scope="module")
def database_url(module_database: str) -> str:
    """Only this module's service processes connect to its database."""
    return module_database


@pytest.fixture
def service(service_env: dict[str, str], request: pytest.FixtureRequest) -> Iterator[Service]:
    """The service named by the test's parameter, with the smallest budget it accepts."""
    name = request.param
    started = Service(name, environment(service_env, DB_POOL_SIZE=str(SMALLEST[name])))
    try:
        wait_healthy(started.port, started.proc)
        yield started
    finally:
        started.stop()


async def others_connections(conn: psycopg.AsyncConnection[tuple[object, ...]]) -> list[str]:
    """The application name of every other client connection to this database."""
    cur = await conn.execute(
        "SELECT application_name FROM pg_stat_activity WHERE datname = current_database()"
        " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
    )
    return [str(row[0]) for row in await cur.fetchall()]


async def burst(port: int, until: float) -> None:
    """Keep `BURST` health checks in flight until `until` (each round of checks opens a
    connection)."""
    limits = httpx.Limits(max_connections=BURST, max_keepalive_connections=BURST)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits) as client:

        async def lane() -> None:
            while time.monotonic() < until:
                await client.get("/health", timeout=10.0)

        await asyncio.gather(*(lane() for _ in range(BURST)))


async def connections_during_burst(database_url: str, port: int) -> list[list[str]]:
    """Samples of the process's connections, taken every `SAMPLE_S` while a burst runs."""
    samples = []
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        loading = asyncio.create_task(burst(port, time.monotonic() + BURST_S))
        while not loading.done():
            samples.append(await others_connections(conn))
            await asyncio.sleep(SAMPLE_S)
        await loading
    return samples


@pytest.mark.parametrize("service", ["gateway", "broadcast", "fanout"], indirect=True)
async def test_a_burst_keeps_a_process_within_db_pool_size(
    service: Service, database_url: str
) -> None:
    """A burst keeps the process within DB_POOL_SIZE connections, each weelo-<service>-<pid>."""
    samples = await connections_during_burst(database_url, service.port)
    peak = max(len(s) for s in samples)
    assert peak <= SMALLEST[service.name], f"{peak} connections at the peak"
    names = {name for sample in samples for name in sample}
    assert names == {f"weelo-{service.name}-{service.proc.pid}"}


def test_a_db_pool_size_too_small_for_the_roles_stops_the_start(
    service_env: dict[str, str],
) -> None:
    """A fan-out given one connection less than its roles need exits 2 naming DB_POOL_SIZE."""
    env = environment(service_env, DB_POOL_SIZE=str(SMALLEST["fanout"] - 1))
    done = run_weelo(env, "run", "fanout", timeout=30)
    assert done.returncode == 2
    assert "DB_POOL_SIZE=5 is too small for fanout" in done.stderr


def test_connections_carry_tcp_keepalives_and_a_user_timeout(database_url: str) -> None:
    """A connection made from `postgres.conninfo` has keepalives and TCP_USER_TIMEOUT set."""
    with psycopg.connect(postgres.conninfo(database_url, "weelo-test")) as conn:
        name = conn.execute("SELECT current_setting('application_name')").fetchone()
        sock = socket.socket(fileno=socket.dup(conn.pgconn.socket))
        with sock:
            if sock.family == socket.AF_UNIX:
                pytest.skip("PostgreSQL is reached over a Unix socket: no TCP options")
            options = [
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
                sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
            ]
    assert name == ("weelo-test",)
    assert options == [1, 10, 5, 3, 25_000]


@pytest.mark.slow  # waits out IDLE_IN_TRANSACTION_MS
def test_a_transaction_left_idle_releases_its_row_locks_within_about_a_second(
    database_url: str,
) -> None:
    """A service connection that locks a row and then says nothing more (its process frozen)
    is ended by PostgreSQL after `IDLE_IN_TRANSACTION_MS`, so another writer of that row waits
    about that long, not for as long as the freeze lasts."""
    with psycopg.connect(database_url, autocommit=True) as setup:
        setup.execute("CREATE TABLE IF NOT EXISTS idle_lock_probe (id int PRIMARY KEY, n int)")
        setup.execute("INSERT INTO idle_lock_probe VALUES (1, 0) ON CONFLICT DO NOTHING")
    frozen = psycopg.connect(postgres.conninfo(database_url, "weelo-test-frozen"))
    try:
        frozen.execute("SELECT n FROM idle_lock_probe WHERE id = 1 FOR UPDATE")
        with psycopg.connect(database_url, autocommit=True) as other:
            other.execute("SET lock_timeout = '10s'")
            began = time.monotonic()
            other.execute("UPDATE idle_lock_probe SET n = n + 1 WHERE id = 1")
            waited = time.monotonic() - began
    finally:
        frozen.close()
        with psycopg.connect(database_url, autocommit=True) as setup:
            setup.execute("DROP TABLE idle_lock_probe")
    assert waited < postgres.IDLE_IN_TRANSACTION_MS / 1000 + 1.0, f"waited {waited:.1f} s"
