"""A cluster for the race tests: two gateways, two broadcast and two acceptance processes.

Two copies of every service make the races real: requests enter through both gateways, and both
consumers of each command group execute them side by side, so concurrent claims meet in
PostgreSQL rather than queueing in one process. The cluster has its own database (the relay's
leadership and every service act on a whole database) and its own Redis key prefix.

A test module uses the fixtures by binding them to its own names (`cluster =
races_fixtures.cluster`, and `database_url` likewise, so the module gets its own database).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from libs.runtime.tokens import Role
from tests.gateway.conftest import Gateway, new_id, spawn, stop, wait_answering
from tests.processes import free_port

RACE_SERVICES = ("broadcast", "broadcast", "acceptance", "acceptance")
LANES = 25
PER_LANE = 20


@dataclass
class Cluster:
    """Gateways sharing one deployment; requests are spread over them in turn."""

    gateways: list[Gateway]
    database_url: str

    def __post_init__(self) -> None:
        self._turn = itertools.cycle(range(len(self.gateways)))

    def url(self, path: str) -> str:
        """`path` on the next gateway in turn."""
        return self.gateways[next(self._turn)].url + path

    def auth(self, role: Role, sub: str | None = None) -> dict[str, str]:
        return self.gateways[0].auth(role, sub)


@pytest.fixture(scope="module")
def database_url(module_database: str) -> str:
    """The cluster's services act on a whole database: it is this module's own."""
    return module_database


def _deployment_env(base: dict[str, str], tmp: Path, **extra: str) -> dict[str, str]:
    run = new_id("race")
    return {
        **base,
        # Under the module's prefix, so the run's sweep deletes these keys too.
        "REDIS_KEY_PREFIX": f"{base['REDIS_KEY_PREFIX']}{run}:",
        "WEELO_STATE_DIR": str(tmp / "state"),
        "JWT_SECRET": f"race-access-secret-{run}-" + "a" * 40,
        "JWT_REFRESH_SECRET": f"race-refresh-secret-{run}-" + "r" * 40,
        **extra,
    }


def start_cluster(
    service_env_module: dict[str, str],
    tmp: Path,
    services: Sequence[str] = RACE_SERVICES,
    gateways: int = 2,
    **extra: str,
) -> Cluster:
    """`gateways` gateway processes with `services` behind them, all answering /health.

    Every process is spawned first and then waited for, so they start side by side."""
    env = _deployment_env(service_env_module, tmp, **extra)
    ports = [free_port() for _ in range(gateways)]
    started = [Gateway(f"http://127.0.0.1:{port}", env, tmp, []) for port in ports]
    health: list[str] = []
    try:
        for service in services:
            port = free_port()
            started[0].procs.append(spawn(service, {**env, "HEALTH_PORT": str(port)}, tmp))
            health.append(f"http://127.0.0.1:{port}/health")
        for gateway, port in zip(started, ports, strict=True):
            gateway.procs.append(spawn("gateway", {**env, "GATEWAY_PORT": str(port)}, tmp))
            health.append(f"{gateway.url}/health")
        procs = [proc for gateway in started for proc in gateway.procs]
        for proc, url in zip(procs, health, strict=True):
            wait_answering(proc, url)
    except BaseException:
        stop_cluster(started)
        raise
    return Cluster(started, env["DATABASE_URL"])


def stop_cluster(gateways: Sequence[Gateway]) -> None:
    """Stop every process of the cluster side by side."""
    stop([proc for gateway in gateways for proc in gateway.procs])


@contextlib.contextmanager
def one_gateway(
    service_env_module: dict[str, str], tmp: Path, services: Sequence[str], **settings: str
) -> Iterator[Cluster]:
    """One gateway with `services` behind it, `settings` in every process's environment;
    stopped at the end."""
    running = start_cluster(service_env_module, tmp, services, gateways=1, **settings)
    try:
        yield running
    finally:
        stop_cluster(running.gateways)


@contextlib.asynccontextmanager
async def client_of(running: Cluster, timeout_s: float) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the cluster's first gateway."""
    async with httpx.AsyncClient(base_url=running.gateways[0].url, timeout=timeout_s) as client:
        yield client


@pytest.fixture(scope="module")
def cluster(
    service_env_module: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """Two gateways, two broadcast and two acceptance processes on this module's database."""
    running = start_cluster(service_env_module, tmp_path_factory.mktemp("race-cluster"))
    yield running
    stop_cluster(running.gateways)


@dataclass
class Lanes:
    """HTTP clients that send a race's requests side by side, request i on client i mod n.

    One httpx client re-examines its whole pool for every request that starts or ends, so a
    few hundred requests in flight on one client cost seconds of CPU in the test process and
    reach the gateway spread out; clients of at most `PER_LANE` connections each avoid that.
    """

    clients: list[httpx.AsyncClient]

    async def warm(self, cluster: Cluster, connections: int) -> None:
        """Open `connections` keep-alive connections (spread over clients and gateways) before a
        race, so its requests do not wait on TCP handshakes one after another (an unknown path:
        the cheapest answer, 404)."""
        calls = [self._lane(i).get(cluster.url("/v1/warm-up")) for i in range(connections)]
        for response in await asyncio.gather(*calls):
            assert response.status_code == 404, response.text

    async def all_at_once(self, requests: Sequence[httpx.Request]) -> list[httpx.Response]:
        """Send every request concurrently: each task waits at one gate, opened when all exist."""
        gate = asyncio.Event()

        async def fire(lane: httpx.AsyncClient, request: httpx.Request) -> httpx.Response:
            await gate.wait()
            return await lane.send(request)

        tasks = [asyncio.create_task(fire(self._lane(i), r)) for i, r in enumerate(requests)]
        gate.set()
        return await asyncio.gather(*tasks)

    def _lane(self, i: int) -> httpx.AsyncClient:
        return self.clients[i % len(self.clients)]


@pytest.fixture(scope="module")
async def lanes(cluster: Cluster) -> AsyncIterator[Lanes]:
    """Enough HTTP clients and connections that a whole race is in flight at once."""
    limits = httpx.Limits(max_connections=PER_LANE, max_keepalive_connections=PER_LANE)
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(httpx.AsyncClient(timeout=30.0, limits=limits))
            for _ in range(LANES)
        ]
        yield Lanes(clients)


@pytest.fixture(scope="module")
def client(lanes: Lanes) -> httpx.AsyncClient:
    """One HTTP client, for single requests and for building a race's requests."""
    return lanes.clients[0]


@pytest.fixture
async def db(cluster: Cluster) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """A connection to the cluster's database, for checking what it holds."""
    async with await psycopg.AsyncConnection.connect(cluster.database_url, autocommit=True) as conn:
        yield conn
