"""The soak's load: its sizes, the fleet it registers, customers' journeys and drivers'
heartbeats, every answer recorded per endpoint and per minute.

A journey: a customer (one of those holding a socket, each with one journey at a time) searches
for one truck of the type of a chosen transporter's vehicle, picked up where that vehicle is
(so that transporter is certainly notified, among the others the search reaches); one second
after the 201 the transporter accepts the slot (`POST /v1/truck-requests/{id}/accept`, which
fills the broadcast); for a share of the journeys half a second later it assigns its driver and
that vehicle; and one journey in `CANCEL_EVERY` the customer cancels two seconds after that,
which cancels the assignment and frees the driver and vehicle (put back in the pool after
`REUSE_AFTER_S`). The assignment share is set so that the drivers last the whole run (a driver
assigned and not cancelled stays busy: the API has no end of trip). The load generator is one
asyncio process on the raw keep-alive HTTP client of `accept_storm` (about 0.06 ms of CPU per
request), one connection pool per gateway; each user talks to one gateway (`gateway_of`).
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import time
import zlib
from collections import Counter, defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec

from bench.accept_storm import RESET, SECRET, TYPES, ConnPool, search_body
from bench.search import square_point
from libs.runtime.tokens import Role, issue

SEARCH, ACCEPT, ASSIGN, CANCEL, HEARTBEAT = (
    "search",
    "accept",
    "driver assignment",
    "cancel",
    "heartbeat",
)
ENDPOINTS = {
    SEARCH: ("POST /v1/broadcasts", 201),
    ACCEPT: ("POST /v1/truck-requests/{id}/accept", 200),
    ASSIGN: ("POST /v1/assignments/{id}/driver", 200),
    CANCEL: ("POST /v1/broadcasts/{id}/cancel", 200),
    HEARTBEAT: ("POST /v1/drivers/me/heartbeat", 204),
}
ACCEPT_AFTER_S = 1.0
ASSIGN_AFTER_S = 0.5
CANCEL_AFTER_S = 2.0
CANCEL_EVERY = 10
REUSE_AFTER_S = 30.0  # a cancelled assignment's driver and vehicle go back to the pool
DRIVER_BUDGET = 0.9  # the share of drivers the run's planned assignments may use
SEED_CONCURRENCY = 64
TOKEN_TTL_S = 6 * 3600
Vehicle = tuple[str, str, str, float, float]  # id, transporter, type, lat, lng


def _env(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


@dataclass(frozen=True)
class Sizes:
    """The issue's sizes, or smaller ones for a trial (`SOAK_SCALE` scales the populations,
    not the rates)."""

    seconds: float = 600.0
    bucket_s: float = 60.0
    transporters: int = 10_000
    vehicles: int = 50_000
    drivers: int = 5_000
    sockets: int = 2_000  # customers' and transporters', half each
    search_rate: float = 20.0
    heartbeat_s: float = 10.0

    @classmethod
    def from_env(cls) -> Sizes:
        """`SOAK_SECONDS`, `SOAK_SCALE`, `SOAK_SEARCH_RATE`, `SOAK_BUCKET_SECONDS` (trials)."""
        scale, d = _env("SOAK_SCALE", 1.0), cls()
        return cls(
            seconds=_env("SOAK_SECONDS", d.seconds),
            bucket_s=_env("SOAK_BUCKET_SECONDS", d.bucket_s),
            transporters=round(d.transporters * scale),
            vehicles=round(d.vehicles * scale),
            drivers=round(d.drivers * scale),
            sockets=round(d.sockets * scale),
            search_rate=_env("SOAK_SEARCH_RATE", d.search_rate),
        )

    def default(self) -> bool:
        return self == Sizes()


def gateway_of(sub: str, ports: Sequence[int]) -> int:
    """The gateway a user talks to: users are split evenly and stably between them."""
    return ports[zlib.crc32(sub.encode()) % len(ports)]


@dataclass
class Fleet:
    """Who exists: vehicles (5 per transporter), one driver for every second transporter,
    and the users that hold sockets."""

    vehicles: list[Vehicle]
    by_transporter: dict[str, list[int]]
    drivers: list[tuple[str, str]]  # driver id, its transporter
    customers: list[str]  # customers with a socket; every search is one of theirs
    socket_transporters: list[str]

    def socket_drivers(self) -> list[str]:
        return [d for i, (d, _) in enumerate(self.drivers) if i % 2]

    def http_drivers(self) -> list[str]:
        return [d for i, (d, _) in enumerate(self.drivers) if not i % 2]


def make_fleet(sizes: Sizes, rng: random.Random) -> Fleet:
    """Vehicles of random types at uniform points of the `search` scenario's 100 x 100 km
    square around Bengaluru."""
    t, v = sizes.transporters, sizes.vehicles
    vehicles = [
        (f"v-{i:05d}", f"t-{i * t // v:05d}", rng.choice(TYPES), *square_point(rng))
        for i in range(v)
    ]
    by_transporter: dict[str, list[int]] = defaultdict(list)
    for index, vehicle in enumerate(vehicles):
        by_transporter[vehicle[1]].append(index)
    drivers = [(f"d-{i:05d}", f"t-{i * t // sizes.drivers:05d}") for i in range(sizes.drivers)]
    half = sizes.sockets // 2
    return Fleet(
        vehicles,
        dict(by_transporter),
        drivers,
        [f"c-{i:05d}" for i in range(half)],
        [f"t-{i:05d}" for i in range(sizes.sockets - half)],
    )


@dataclass
class Recorder:
    """Every answer's latency and every error, by endpoint and by bucket (minute) of the time
    the request was due."""

    t0: float  # time.monotonic() of the soak's start
    bucket_s: float
    latencies: dict[tuple[str, int], list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[tuple[str, int], Counter[str]] = field(
        default_factory=lambda: defaultdict(Counter)
    )

    def bucket(self, at: float) -> int:
        return int((at - self.t0) // self.bucket_s)

    def note(self, endpoint: str, due: float, status: int, raw: bytes) -> None:
        key = (endpoint, self.bucket(due))
        self.latencies[key].append(time.monotonic() - due)
        if status != ENDPOINTS[endpoint][1]:
            self.errors[key][_error_kind(status, raw)] += 1


def _error_kind(status: int, raw: bytes) -> str:
    if status == RESET:
        return "connection reset before the answer"
    try:
        code = msgspec.json.decode(raw).get("error", {}).get("code", "?")
    except (msgspec.DecodeError, AttributeError):
        code = "?"
    return f"{status} {code}"


class Api:
    """The gateways' HTTP API as the users call it: each user on its own gateway, with tokens
    signed once per user."""

    def __init__(self, ports: Sequence[int], recorder: Recorder | None = None) -> None:
        self.ports = list(ports)
        self.recorder = recorder
        self._pools = {p: ConnPool(p) for p in ports}
        self._tokens: dict[tuple[str, str], str] = {}

    def token(self, role: Role, sub: str) -> str:
        key = (role, sub)
        if key not in self._tokens:
            self._tokens[key] = issue(SECRET, role=role, sub=sub, ttl_s=TOKEN_TTL_S)
        return self._tokens[key]

    async def call(
        self,
        endpoint: str,
        role: Role,
        sub: str,
        path: str,
        body: bytes = b"",
        due: float | None = None,
        method: str = "POST",
    ) -> tuple[int, bytes]:
        """One request; recorded under `endpoint` (latency from `due`, default now) when the
        Api has a recorder."""
        due = time.monotonic() if due is None else due
        pool = self._pools[gateway_of(sub, self.ports)]
        status, raw = await pool.request(method, path, self.token(role, sub), body)
        if self.recorder is not None:
            self.recorder.note(endpoint, due, status, raw)
        return status, raw

    async def close(self) -> None:
        await asyncio.gather(*(p.close() for p in self._pools.values()))


# --- seeding through the API --------------------------------------------------------------------


@dataclass
class Seeded:
    """How the registration through the API went."""

    vehicles_s: float = 0.0
    drivers_s: float = 0.0
    online_s: float = 0.0
    failures: Counter[str] = field(default_factory=Counter)


async def _all(api: Api, calls: list[tuple[Role, str, str, bytes]], seeded: Seeded) -> float:
    """PUT every (role, sub, path, body), `SEED_CONCURRENCY` at a time; seconds it took."""
    gate, began = asyncio.Semaphore(SEED_CONCURRENCY), time.monotonic()

    async def one(role: Role, sub: str, path: str, body: bytes) -> None:
        async with gate:
            status, raw = await api.call("seed", role, sub, path, body, method="PUT")
        if status != 200:
            seeded.failures[f"{path.split('/')[-2]}: {_error_kind(status, raw)}"] += 1

    await asyncio.gather(*(one(*c) for c in calls))
    return time.monotonic() - began


async def register(api: Api, fleet: Fleet, seeded: Seeded) -> None:
    """Every vehicle and driver through `PUT /v1/transporters/me/vehicles|drivers/{id}`."""
    vehicles: list[tuple[Role, str, str, bytes]] = [
        (
            "transporter",
            t,
            f"/v1/transporters/me/vehicles/{v}",
            msgspec.json.encode({"vehicleType": k, "lat": lat, "lng": lng}),
        )
        for v, t, k, lat, lng in fleet.vehicles
    ]
    seeded.vehicles_s = await _all(api, vehicles, seeded)
    body = msgspec.json.encode({"name": "Soak Driver", "phone": "+910000000000"})
    drivers: list[tuple[Role, str, str, bytes]] = [
        ("transporter", t, f"/v1/transporters/me/drivers/{d}", body) for d, t in fleet.drivers
    ]
    seeded.drivers_s = await _all(api, drivers, seeded)


async def go_online(api: Api, fleet: Fleet, seeded: Seeded) -> None:
    """Every driver `PUT /v1/drivers/me/availability {"online": true}`."""
    body = msgspec.json.encode({"online": True})
    calls: list[tuple[Role, str, str, bytes]] = [
        ("driver", d, "/v1/drivers/me/availability", body) for d, _ in fleet.drivers
    ]
    seeded.online_s = await _all(api, calls, seeded)


# --- the soak's load --------------------------------------------------------------------------


@dataclass
class Plan:
    transporter: str
    vehicle: int  # index into the fleet's vehicles
    driver: str | None  # assign this driver (and the vehicle) after the accept
    cancel: bool


@dataclass
class Tally:
    """What the load did besides answers."""

    journeys: int = 0
    assignments_planned: int = 0
    no_free_driver: int = 0  # journeys meant to assign a driver that found none free
    customers_busy: int = 0  # journeys that waited for a customer whose last journey had ended
    notified: list[int] = field(default_factory=list)


class Workload:
    """Journeys at `search_rate` and heartbeats of every second driver every `heartbeat_s`,
    from `recorder.t0` for `sizes.seconds`."""

    def __init__(self, api: Api, fleet: Fleet, sizes: Sizes, rng: random.Random) -> None:
        assert api.recorder is not None
        self.api, self.fleet, self.sizes, self.rng = api, fleet, sizes, rng
        self.recorder = api.recorder
        self.tally = Tally()
        self.customers: deque[str] = deque(fleet.customers)
        self.free_drivers: deque[tuple[str, str]] = deque(fleet.drivers)
        self.busy_vehicles: set[int] = set()
        journeys = sizes.search_rate * sizes.seconds * (1 - 1 / CANCEL_EVERY)
        self.assign_share = min(1.0, DRIVER_BUDGET * sizes.drivers / max(1.0, journeys))
        self._customer_freed = asyncio.Event()

    async def run(self) -> None:
        until = self.recorder.t0 + self.sizes.seconds
        await asyncio.gather(self._searches(until), self._heartbeats(until))

    async def _searches(self, until: float) -> None:
        tasks: set[asyncio.Task[None]] = set()
        for i in range(int(self.sizes.seconds * self.sizes.search_rate)):
            due = self.recorder.t0 + i / self.sizes.search_rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            task = asyncio.create_task(self._journey(due, i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.sleep(max(0.0, until - time.monotonic()))
        await asyncio.gather(*tasks)

    async def _heartbeats(self, until: float) -> None:
        drivers = self.fleet.http_drivers()
        period = self.sizes.heartbeat_s

        async def beat(driver: str, offset: float) -> None:
            due = self.recorder.t0 + offset
            while due < until:
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                await self.api.call(
                    HEARTBEAT, "driver", driver, "/v1/drivers/me/heartbeat", due=due
                )
                due += period

        await asyncio.gather(*(beat(d, period * i / len(drivers)) for i, d in enumerate(drivers)))

    def _plan(self, i: int) -> Plan:
        assign = self.rng.random() < self.assign_share
        cancel = i % CANCEL_EVERY == CANCEL_EVERY - 1
        if assign:
            self.tally.assignments_planned += 1
            plan = self._with_driver(cancel)
            if plan is not None:
                return plan
            self.tally.no_free_driver += 1
        transporter = f"t-{self.rng.randrange(self.sizes.transporters):05d}"
        vehicle = self.rng.choice(self.fleet.by_transporter[transporter])
        return Plan(transporter, vehicle, None, cancel)

    def _with_driver(self, cancel: bool) -> Plan | None:
        """A free driver's transporter and one of its vehicles that holds no assignment."""
        for _ in range(len(self.free_drivers)):
            driver, transporter = self.free_drivers.popleft()
            free = [
                v for v in self.fleet.by_transporter[transporter] if v not in self.busy_vehicles
            ]
            if free:
                vehicle = self.rng.choice(free)
                self.busy_vehicles.add(vehicle)
                return Plan(transporter, vehicle, driver, cancel)
            self.free_drivers.append((driver, transporter))
        return None

    async def _customer(self) -> str:
        while not self.customers:
            self.tally.customers_busy += 1
            self._customer_freed.clear()
            await self._customer_freed.wait()
        return self.customers.popleft()

    def _release(self, customer: str) -> None:
        self.customers.append(customer)
        self._customer_freed.set()

    async def _journey(self, due: float, i: int) -> None:
        plan, customer = self._plan(i), await self._customer()
        self.tally.journeys += 1
        try:
            freed = await self._steps(plan, customer, due)
        finally:
            self._release(customer)
        if plan.driver is not None and freed:
            asyncio.get_running_loop().call_later(REUSE_AFTER_S, self._reuse, plan)

    def _reuse(self, plan: Plan) -> None:
        assert plan.driver is not None
        self.busy_vehicles.discard(plan.vehicle)
        self.free_drivers.append((plan.driver, plan.transporter))

    async def _steps(self, plan: Plan, customer: str, due: float) -> bool:
        """Search, accept, assign, cancel; whether the planned driver and vehicle are free
        again (never assigned, or their assignment cancelled)."""
        _, _, kind, lat, lng = self.fleet.vehicles[plan.vehicle]
        body = search_body([(kind, 1)], (lat, lng), square_point(self.rng))
        status, raw = await self.api.call(SEARCH, "customer", customer, "/v1/broadcasts", body, due)
        if status != 201:
            return True
        created = msgspec.json.decode(raw)
        self.tally.notified.append(created["notifiedTransporters"])
        broadcast = created["broadcastId"]
        assigned = await self._accept_and_assign(plan, created["truckRequests"][0])
        if plan.cancel or assigned is None:
            await asyncio.sleep(CANCEL_AFTER_S)
            status, _ = await self.api.call(
                CANCEL, "customer", customer, f"/v1/broadcasts/{broadcast}/cancel", b"{}"
            )
            return status == 200 or not assigned
        return not assigned

    async def _accept_and_assign(self, plan: Plan, slot: dict[str, str]) -> bool | None:
        """Accept the slot and, when planned, assign the driver: whether a driver was assigned,
        None when the accept failed (the journey then cancels its broadcast)."""
        await asyncio.sleep(ACCEPT_AFTER_S)
        path = f"/v1/truck-requests/{slot['truckRequestId']}/accept"
        status, raw = await self.api.call(ACCEPT, "transporter", plan.transporter, path)
        if status != 200:
            return None
        if plan.driver is None:
            return False
        await asyncio.sleep(ASSIGN_AFTER_S)
        assignment = msgspec.json.decode(raw)["assignments"][0]["assignmentId"]
        body = msgspec.json.encode(
            {"driverId": plan.driver, "vehicleId": self.fleet.vehicles[plan.vehicle][0]}
        )
        path = f"/v1/assignments/{assignment}/driver"
        status, _ = await self.api.call(ASSIGN, "transporter", plan.transporter, path, body)
        return status == 200


def mean_notified(tally: Tally) -> str:
    if not tally.notified:
        return "no search answered"
    return f"mean {statistics.mean(tally.notified):,.0f}, max {max(tally.notified):,}"
