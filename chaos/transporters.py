"""A transporter: hears of broadcasts (its socket's `new_broadcast`, or its list), accepts
slots of each at most once (one request per broadcast, a single truck request or a quantity),
and puts a free driver and vehicle on every slot it won once the broadcast is fully filled.

One accept request (with its retries) per transporter and broadcast is what lets the checker
tie every slot the transporter won to the one answer it got.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from chaos.api import Api, Party, outcome

LIST_EVERY_S = 1.5
MAX_ROUNDS = 100_000


class Transporter:
    def __init__(
        self,
        party: Party,
        api: Api,
        vehicles: dict[str, list[str]],
        drivers: list[str],
        rng: random.Random,
    ) -> None:
        self.party, self.api, self.rng = party, api, rng
        self.vehicles, self.drivers = vehicles, drivers
        self.seen: set[str] = set()
        self.heard: asyncio.Queue[str] = asyncio.Queue()
        self.reserved: set[str] = set()  # drivers and vehicles with an assignment call in flight
        self.tasks: set[asyncio.Task[None]] = set()

    def on_frame(self, frame: dict[str, Any]) -> None:
        if frame.get("type") == "new_broadcast":
            self.heard.put_nowait(str(frame["data"]["broadcastId"]))

    async def run(self, until: float) -> None:
        lister = asyncio.create_task(self._list(until))
        for _ in range(MAX_ROUNDS):
            left = until - time.time()
            if left <= 0:
                break
            try:
                broadcast = await asyncio.wait_for(self.heard.get(), min(left, 0.5))
            except TimeoutError:
                continue
            if broadcast not in self.seen:
                self.seen.add(broadcast)
                self._spawn(self._accept(broadcast, until))
        await lister
        while self.tasks:
            await asyncio.gather(*list(self.tasks))

    def _spawn(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _list(self, until: float) -> None:
        while time.time() < until:
            found = await self.api.call(self.party, "read", "GET", "/v1/transporters/me/broadcasts")
            if found.status == 200:
                for b in found.response["broadcasts"]:
                    self.heard.put_nowait(str(b["broadcastId"]))
            await asyncio.sleep(LIST_EVERY_S)

    async def _accept(self, broadcast: str, until: float) -> None:
        await asyncio.sleep(self.rng.uniform(0, 0.4))
        if self.rng.random() < 0.15 or time.time() >= until:
            return
        read = await self.api.call(self.party, "read", "GET", f"/v1/broadcasts/{broadcast}")
        if read.status != 200:
            return
        open_slots = [
            r for r in read.response["truckRequests"]
            if r["state"] == "open" and r["vehicleType"] in self.vehicles
        ]  # fmt: skip
        if not open_slots:
            return
        keyed = self.rng.random() < 0.7
        if self.rng.random() < 0.5:
            slot = self.rng.choice(open_slots)
            path = f"/v1/truck-requests/{slot['truckRequestId']}/accept"
            attempts = await self.api.chain(self.party, "accept_one", "POST", path, keyed=keyed)
        else:
            kind = self.rng.choice(open_slots)["vehicleType"]
            count = sum(1 for r in open_slots if r["vehicleType"] == kind)
            body = {"vehicleType": kind, "quantity": self.rng.randint(1, min(3, count + 1))}
            path = f"/v1/broadcasts/{broadcast}/accept"
            attempts = await self.api.chain(
                self.party, "accept_many", "POST", path, body, keyed=keyed
            )
        won = outcome(attempts)
        if won is not None and won.status == 200:
            for assignment in won.response["assignments"]:
                self._spawn(self._assign(broadcast, assignment, until))

    async def _assign(self, broadcast: str, assignment: dict[str, Any], until: float) -> None:
        """Once the broadcast is fully filled, put a free driver and vehicle on the slot."""
        while time.time() < until:
            read = await self.api.call(self.party, "read", "GET", f"/v1/broadcasts/{broadcast}")
            state = read.response.get("state") if read.status == 200 else None
            if state == "fully_filled":
                break
            if state in ("expired", "cancelled"):
                return
            await asyncio.sleep(1.0)
        else:
            return
        await asyncio.sleep(self.rng.uniform(0, 1.0))
        choice = await self._free_pair(str(assignment["vehicleType"]))
        if choice is None:
            return
        self.reserved.update(choice)
        try:
            body = {"driverId": choice[0], "vehicleId": choice[1]}
            path = f"/v1/assignments/{assignment['assignmentId']}/driver"
            keyed = self.rng.random() < 0.7
            await self.api.chain(self.party, "assign", "POST", path, body, keyed=keyed)
        finally:
            self.reserved.difference_update(choice)

    async def _free_pair(self, vehicle_type: str) -> tuple[str, str] | None:
        """A driver online without an assignment and a vehicle of the type on none, as this
        transporter's reads show them (another call may take them first: driver_busy)."""
        drivers = await self.api.call(self.party, "read", "GET", "/v1/transporters/me/drivers")
        active = await self.api.call(self.party, "read", "GET", "/v1/transporters/me/assignments")
        if drivers.status != 200 or active.status != 200:
            return None
        free_drivers = [
            d["driverId"] for d in drivers.response["drivers"]
            if d["online"] and d["activeAssignmentId"] is None
            and d["driverId"] not in self.reserved
        ]  # fmt: skip
        busy = {a.get("vehicleId") for a in active.response["assignments"]} | self.reserved
        free_vehicles = [v for v in self.vehicles.get(vehicle_type, []) if v not in busy]
        if not free_drivers or not free_vehicles:
            return None
        return self.rng.choice(free_drivers), self.rng.choice(free_vehicles)
