"""The steady mix of clients for the whole run: customers, transporters with their fleets,
drivers, and a WebSocket for every one of them (chaos/customers.py, transporters.py,
drivers.py, sockets.py). Everything goes through the public HTTP API and WebSocket."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any

from chaos.api import Api, Party
from chaos.config import Population
from chaos.customers import PICKUP_LAT, PICKUP_LNG, Customer
from chaos.drivers import Driver
from chaos.records import RunLog
from chaos.sockets import OnFrame, UserSocket
from chaos.transporters import Transporter
from libs.runtime.tokens import Role, issue

CONNECT_WITHIN_S = 20.0


def party(secret: str, role: Role, sub: str, ttl_s: int) -> Party:
    return Party(role, sub, issue(secret, role=role, sub=sub, ttl_s=ttl_s))


@dataclass
class Workload:
    api: Api
    customers: list[Customer]
    transporters: list[Transporter]
    drivers: list[Driver]
    sockets: list[UserSocket]
    calm: asyncio.Event = field(default_factory=asyncio.Event)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    _socket_tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def register_fleet(self) -> None:
        """Every transporter's vehicles (near the pickup) and drivers, before any fault."""
        for t in self.transporters:
            for kind, ids in t.vehicles.items():
                for i, vehicle in enumerate(ids):
                    body = {"vehicleType": kind, "lat": PICKUP_LAT + 0.01 * i, "lng": PICKUP_LNG}
                    await self._must(t.party, f"/v1/transporters/me/vehicles/{vehicle}", body)
            for driver in t.drivers:
                body = {"name": f"Driver {driver}", "phone": "+91-98450-00000"}
                await self._must(t.party, f"/v1/transporters/me/drivers/{driver}", body)

    async def _must(self, owner: Party, path: str, body: dict[str, object]) -> None:
        for _ in range(20):
            if (await self.api.call(owner, "fleet", "PUT", path, body)).status == 200:
                return
            await asyncio.sleep(0.5)
        raise RuntimeError(f"could not register {path}")

    async def open_sockets(self) -> None:
        """Every party's socket, connected before any request: nothing meant for it is missed."""
        self._socket_tasks = [
            asyncio.create_task(s.run(self.calm, self.stop)) for s in self.sockets
        ]
        waits = [asyncio.wait_for(s.connected.wait(), CONNECT_WITHIN_S) for s in self.sockets]
        await asyncio.gather(*waits)

    async def run(self, until: float) -> None:
        """Every actor until `until`; each finishes what it has in hand, then returns."""
        await asyncio.gather(
            *(c.run(until) for c in self.customers),
            *(t.run(until) for t in self.transporters),
            *(d.run(until) for d in self.drivers),
        )

    async def close_sockets(self) -> None:
        self.stop.set()
        await asyncio.gather(*self._socket_tasks)


def _ignore(frame: dict[str, Any]) -> None:
    """Customers and drivers only log their frames."""


def build(api: Api, log: RunLog, secret: str, population: Population, seed: int) -> Workload:
    """The parties of one run, each with its own seeded random source and socket."""
    ttl = 6 * 3600
    run = f"s{seed}"  # the database and Redis are the run's own: ids need not be unique beyond it
    sockets: list[UserSocket] = []

    def socket_for(p: Party, on_frame: OnFrame = _ignore) -> None:
        sockets.append(UserSocket(p, api.gateways, log, on_frame))

    customers = []
    for i in range(population.customers):
        p = party(secret, "customer", f"c{i}-{run}", ttl)
        customers.append(Customer(p, api, population.vehicle_types, random.Random(f"{seed}c{i}")))
        socket_for(p)
    transporters, drivers = [], []
    for i in range(population.transporters):
        p = party(secret, "transporter", f"t{i}-{run}", ttl)
        vehicles = {
            kind: [f"v{i}{kind[:4]}{n}-{run}" for n in range(population.vehicles_per_type)]
            for kind in population.vehicle_types
        }
        own = [f"d{i}x{n}-{run}" for n in range(population.drivers_per_transporter)]
        t = Transporter(p, api, vehicles, own, random.Random(f"{seed}t{i}"))
        transporters.append(t)
        socket_for(p, t.on_frame)
        for d in own:
            dp = party(secret, "driver", d, ttl)
            drivers.append(Driver(dp, api, random.Random(f"{seed}{d}")))
            socket_for(dp)
    return Workload(api, customers, transporters, drivers, sockets)
