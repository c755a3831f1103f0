"""Real gateway processes (and the broadcast and acceptance services) for the gateway tests.

`system` is one gateway, one broadcast and one acceptance process shared by the session, on
their own Redis key prefix; `start_gateway` starts a gateway of its own for a test that needs
special settings (a tiny rate limit, an unreachable Redis, no services behind it).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import psycopg
import pytest

from libs.runtime.tokens import Role, issue
from tests.keys import forget_keys
from tests.processes import DB_POOL_SIZE, free_port, start_service, stop_all

if TYPE_CHECKING:
    from tests.gateway.seed import Seeder

START_WITHIN_S = 30.0
STOP_WITHIN_S = 15.0


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def spawn(service: str, env: Mapping[str, str], logs: Path) -> Proc:
    log = logs / f"{service}-{uuid.uuid4().hex[:6]}.log"
    return Proc(service, start_service(service, env, log), log)


def stop(procs: Iterable[Proc]) -> None:
    """Stop `procs` side by side (SIGTERM once, a kill if one overstays `STOP_WITHIN_S`)."""
    stop_all((proc.popen for proc in procs), STOP_WITHIN_S)


def wait_answering(proc: Proc, url: str, *, healthy: bool = True) -> None:
    """Poll `url` until it answers (200 when `healthy`); fail if the process dies first."""
    deadline = time.monotonic() + START_WITHIN_S
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise AssertionError(f"{proc.name} exited early:\n{proc.tail()}")
        with contextlib.suppress(httpx.HTTPError):
            status = httpx.get(url, timeout=2.0).status_code
            if status == 200 or not healthy:
                return
        time.sleep(0.1)
    raise AssertionError(f"{proc.name} did not answer {url} within {START_WITHIN_S} s")


@dataclass
class Gateway:
    url: str
    env: dict[str, str]
    logs: Path
    procs: list[Proc]

    @property
    def access_secret(self) -> str:
        return self.env["JWT_SECRET"]

    @property
    def refresh_secret(self) -> str:
        return self.env["JWT_REFRESH_SECRET"]

    @property
    def prefix(self) -> str:
        return self.env["REDIS_KEY_PREFIX"]

    def add_service(self, service: str) -> None:
        """Start one more service process beside this gateway, answering its /health."""
        health = free_port()
        self.procs.insert(0, spawn(service, {**self.env, "HEALTH_PORT": str(health)}, self.logs))
        wait_answering(self.procs[0], f"http://127.0.0.1:{health}/health")

    def stop(self) -> None:
        """Stop every process of this gateway (SIGTERM, a kill if one overstays)."""
        stop(self.procs)

    def token(self, role: Role, sub: str | None = None, ttl_s: int = 600) -> str:
        return issue(self.access_secret, role=role, sub=sub or new_id(role), ttl_s=ttl_s)

    def auth(self, role: Role, sub: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(role, sub)}"}


def new_id(kind: str = "id") -> str:
    return f"{kind}-{uuid.uuid4().hex[:12]}"


def start(
    env: Mapping[str, str], logs: Path, services: tuple[str, ...] = (), *, healthy: bool = True
) -> Gateway:
    """A gateway (and `services`) on `env`, answering on its port."""
    port = free_port()
    gateway = Gateway(f"http://127.0.0.1:{port}", dict(env), logs, [])
    try:
        for service in services:
            gateway.add_service(service)
        gateway.procs.append(spawn("gateway", {**env, "GATEWAY_PORT": str(port)}, logs))
        wait_answering(gateway.procs[-1], f"{gateway.url}/health", healthy=healthy)
    except BaseException:
        gateway.stop()
        raise
    return gateway


@contextlib.contextmanager
def started(
    env: Mapping[str, str], logs: Path, services: tuple[str, ...] = (), *, healthy: bool = True
) -> Iterator[Gateway]:
    """`start`, and stop every process of it afterwards."""
    gateway = start(env, logs, services, healthy=healthy)
    try:
        yield gateway
    finally:
        gateway.stop()


@pytest.fixture(scope="package")
def system(
    database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """One gateway with the broadcast and acceptance services behind it, for the gateway tests
    (they run one after another, on one worker: `LANES` in tests/conftest.py)."""
    tmp = tmp_path_factory.mktemp("gateway-system")
    run = uuid.uuid4().hex[:8]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEST_", "PYTEST_"))}
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        REDIS_KEY_PREFIX=f"test-gw-{run}:",
        WEELO_STATE_DIR=str(tmp / "state"),
        JWT_SECRET=f"gateway-access-secret-{run}-" + "a" * 48,
        JWT_REFRESH_SECRET=f"gateway-refresh-secret-{run}-" + "r" * 48,
        DB_POOL_SIZE=DB_POOL_SIZE,
    )
    with started(env, tmp, ("broadcast", "acceptance")) as gateway:
        yield gateway
    forget_keys(redis_url, env["REDIS_KEY_PREFIX"])


@pytest.fixture(scope="package")
def presence(system: Gateway) -> Gateway:
    """The shared gateway with the presence service running behind it too."""
    if not any(proc.name == "presence" for proc in system.procs):
        system.add_service("presence")
    return system


@pytest.fixture
async def api(system: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for the shared gateway."""
    async with httpx.AsyncClient(base_url=system.url, timeout=15.0) as client:
        yield client


StartGateway = Callable[..., Gateway]


@pytest.fixture
def start_gateway(service_env: dict[str, str], tmp_path: Path) -> Iterator[StartGateway]:
    """Start a gateway of this test's own (no services behind it) with extra environment."""
    gateways: list[Gateway] = []

    def run(healthy: bool = True, **extra: str) -> Gateway:
        gateways.append(start({**service_env, **extra}, tmp_path, healthy=healthy))
        return gateways[-1]

    yield run
    for gateway in gateways:
        gateway.stop()


@pytest.fixture
async def seed(conn: psycopg.AsyncConnection[Any]) -> AsyncIterator[Seeder]:
    """Writes read-model rows for a test and deletes them afterwards."""
    from tests.gateway.seed import Seeder

    seeder = Seeder(conn)
    yield seeder
    await seeder.remove()
