"""Two gateway processes with the broadcast, acceptance, timer and presence services and two
fan-out processes behind them, as real processes on their own database and Redis key prefix, for
one test module.

A module may override `settings` to change the services' environment (a short presence TTL).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
import pytest

from libs.events.lease import projector_role
from libs.runtime.tokens import Role, issue
from tests.processes import Service, environment, services, stop_all, wait_healthy
from tests.realtime.sockets import Socket

GATEWAYS = 2
BACKEND = ("broadcast", "acceptance", "timer", "presence")
FANOUTS = 2  # the lease decides which one projects


@pytest.fixture(scope="module")
def database_url(module_database: str) -> str:
    """Services act on their whole database: each module gets its own."""
    return module_database


@pytest.fixture(scope="module")
def settings() -> dict[str, str]:
    return {"BROADCAST_TIMEOUT_SECONDS": "6", "PRESENCE_TTL_SECONDS": "30"}


def new_id(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:10]}"


@dataclass
class System:
    env: dict[str, str]
    procs: dict[str, Service]
    gateways: list[Service]
    fanouts: list[Service]
    turn: int = 0

    def url(self, gateway: int | None = None) -> str:
        """Gateway `gateway`'s base URL; by default the next running one, in turn."""
        if gateway is None:
            running = [i for i, g in enumerate(self.gateways) if g.proc.poll() is None]
            self.turn += 1
            gateway = running[self.turn % len(running)]
        return f"http://127.0.0.1:{self.gateways[gateway].port}"

    def token(self, role: Role, sub: str, secret: str | None = None, ttl_s: int = 600) -> str:
        return issue(secret or self.env["JWT_SECRET"], role=role, sub=sub, ttl_s=ttl_s)

    def auth(self, role: Role, sub: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(role, sub)}"}

    def ws_url(self, gateway: int = 0, **query: str) -> str:
        params = "&".join(f"{k}={v}" for k, v in query.items())
        return f"ws://127.0.0.1:{self.gateways[gateway].port}/v1/ws" + (
            f"?{params}" if params else ""
        )

    async def connect(self, role: Role, sub: str, gateway: int = 0, **query: str) -> Socket:
        """A socket of `role` `sub` on gateway `gateway`, token in the header."""
        headers = self.auth(role, sub)
        socket = await Socket.open(self.ws_url(gateway, **query), additional_headers=headers)
        socket.role, socket.sub = role, sub
        return socket

    def restart_gateway(self, index: int) -> None:
        """Start gateway `index` again on its port after it was stopped or killed."""
        old = self.gateways[index]
        new = Service("gateway", self.env, port=old.port)
        wait_healthy(new.port, new.proc)
        self.gateways[index] = new

    def restart_fanout(self, index: int) -> None:
        """Start fan-out `index` again after it was stopped or killed."""
        new = Service("fanout", self.env)
        wait_healthy(new.port, new.proc)
        self.fanouts[index] = new

    async def projecting(self) -> int:
        """The index in `fanouts` of the process holding the projector's lease."""
        pid = await projector_pid(self.env["DATABASE_URL"], self.env["REDIS_KEY_PREFIX"])
        return next(i for i, f in enumerate(self.fanouts) if f.proc.pid == pid)


async def projector_pid(database_url: str, prefix: str) -> int:
    """The pid of the fan-out holding the projector's lease (its instance name holds it)."""
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        for _ in range(200):
            cur = await conn.execute(
                "SELECT holder FROM leases WHERE role = %s AND expires_at > now()",
                (projector_role(prefix),),
            )
            row = await cur.fetchone()
            if row is not None:
                return int(str(row[0]).split("-")[-2])
            await asyncio.sleep(0.05)
    raise AssertionError("no fan-out holds the projector's lease")


@pytest.fixture(scope="module")
def system(service_env_module: dict[str, str], settings: dict[str, str]) -> Iterator[System]:
    secrets = {k: v + "-" + "x" * 32 for k, v in service_env_module.items() if k.startswith("JWT_")}
    env = environment(service_env_module, **secrets, **settings)
    names = [*(["gateway"] * GATEWAYS), *BACKEND, *(["fanout"] * FANOUTS)]
    with services(names, env) as procs:
        gateways = [procs["gateway"], *(procs[f"gateway-{i}"] for i in range(1, GATEWAYS))]
        fanouts = [p for p in procs.values() if p.name == "fanout"]
        system = System(env, procs, gateways, fanouts)
        yield system
        # The socket holders first, then the rest.
        stop_all(process.proc for process in (*system.gateways, *system.fanouts))


@pytest.fixture
async def api(system: System) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=15.0) as client:
        yield client


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json() if response.content else None
