"""`accept-storm`: transporters racing for truck requests through the gateway, end to end.

A real deployment (`weelo run` gateway, broadcast, acceptance and timer) on a scratch database;
the fleet (200 transporters, each with one vehicle of each of 10 types) is written straight into
the event store and read model; broadcasts are created through the HTTP API (10 types x 20 =
200 slots each), so every broadcast reaches all 200 transporters. Three measurements:

1. storm (closed loop): 200 transporters, one connection each, race over 1,000 slots; each picks
   a random slot it does not know to be taken and accepts it, until every slot is won;
2. steady (open loop): 200 accept attempts/s at fixed times; latency counts from the scheduled
   time, so a slow answer also delays the measurement of the ones queued behind it;
3. bursts: 200 transporters accept one slot at the same moment; time until the last answer.

Afterwards the database must hold at most one assignment per slot, and every slot answered 200
must be held by that winner. The load generator is this process: a small HTTP/1.1 client on raw
keep-alive connections, about 0.06 ms of CPU per request, where httpx took 0.9 ms (ten clients)
to 2.5 ms (one client: its pool is rescanned for every request) on this machine, which would
make the client a large share of the two cores. Its CPU time is reported beside each
service's, PostgreSQL's and Redis's, with the Redis commands run per request.

`BENCH_PROFILE=gateway,acceptance` runs those services under cProfile (/tmp/bench-NAME.prof).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import redis as redis_sync
import uvloop

from bench.common import (
    ROOT,
    Figures,
    free_port,
    healthy,
    percentile,
    scratch_database,
    servers,
    service_env,
    verdict,
    wait_until,
    weelo,
)
from libs.events.catalogue import VehicleRegistered
from libs.events.store import append_many
from libs.events.streams import CATEGORIES, events_stream
from libs.runtime.tokens import Role, issue

SERVICES = ("broadcast", "acceptance", "timer", "fanout")
CENTRE = (12.97, 77.59)
TYPES = [f"type_{i}" for i in range(10)]
TRANSPORTERS = 200
STORM_BROADCASTS = 5
STORM_RUNS = 3  # consecutive runs on this machine differ by up to a third
STEADY_RATE = 200
STEADY_SECONDS = 10
STEADY_TRIES_PER_SLOT = 2
BURSTS = 5
STORM_TARGET = 500  # attempts/s
P99_TARGET_S = 0.050
BURST_TARGET_S = 1.0
SECRET = "bench-access-secret-" + "x" * 40


# --- a minimal HTTP/1.1 client on keep-alive connections ---------------------------------------


class HttpConn:
    """One keep-alive connection to the gateway; one request at a time."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def open(self) -> HttpConn:
        self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self.port)
        return self

    async def request(
        self, method: str, path: str, token: str, body: bytes = b""
    ) -> tuple[int, bytes]:
        """(status, body); a connection the server closed while idle is reopened once."""
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        try:
            return await self._exchange(head + body)
        except (asyncio.IncompleteReadError, ConnectionError):
            await self.close()
            await self.open()
            return await self._exchange(head + body)

    async def _exchange(self, raw: bytes) -> tuple[int, bytes]:
        assert self._reader is not None and self._writer is not None
        self._writer.write(raw)
        header = await self._reader.readuntil(b"\r\n\r\n")
        at = header.lower().find(b"content-length:")
        length = int(header[at + 15 : header.index(b"\r\n", at)]) if at >= 0 else 0
        return int(header[9:12]), await self._reader.readexactly(length)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
            self._writer = None


class ConnPool:
    """Connections handed out one request at a time, opened when none is free."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._free: list[HttpConn] = []
        self._all: list[HttpConn] = []

    async def fill(self, count: int) -> None:
        opened = await asyncio.gather(*(HttpConn(self.port).open() for _ in range(count)))
        self._free += opened
        self._all += opened

    async def request(
        self, method: str, path: str, token: str, body: bytes = b""
    ) -> tuple[int, bytes]:
        conn = self._free.pop() if self._free else await HttpConn(self.port).open()
        if conn not in self._all:
            self._all.append(conn)
        try:
            return await conn.request(method, path, token, body)
        finally:
            self._free.append(conn)

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self._all))


# --- the deployment: scratch database, service processes, CPU accounting ------------------------


@dataclass
class Deployment:
    database_url: str
    redis_url: str
    prefix: str
    port: int
    procs: dict[str, subprocess.Popen[bytes]]
    tokens: dict[tuple[str, str], str] = field(default_factory=dict)

    def token(self, role: Role, sub: str) -> str:
        """A signed access token, made once per caller (signing is not what is measured)."""
        key = (role, sub)
        if key not in self.tokens:
            self.tokens[key] = issue(SECRET, role=role, sub=sub, ttl_s=3600)
        return self.tokens[key]


@contextlib.contextmanager
def deployment(services: Sequence[str] = SERVICES, **extra: str) -> Iterator[Deployment]:
    """A scratch database and prefix with the gateway and `services` running, all healthy."""
    target, prefix = servers(), f"bench-{uuid.uuid4().hex[:8]}:"
    with scratch_database(target.database_url) as url:
        env = service_env(
            url,
            target.redis_url,
            prefix,
            BROADCAST_TIMEOUT_SECONDS="3600",
            JWT_SECRET=SECRET,
            JWT_REFRESH_SECRET=SECRET + "-refresh",
            RATE_LIMIT_PER_MINUTE="1000000",
            **extra,
        )
        port, procs, ports = free_port(), {}, {}
        try:
            for name in ("gateway", *services):
                ports[name] = port if name == "gateway" else free_port()
                key = "GATEWAY_PORT" if name == "gateway" else "HEALTH_PORT"
                run_env = {**env, key: str(ports[name])}
                procs[name] = subprocess.Popen(_command(name), env=run_env, cwd=ROOT)
            for name, p in ports.items():
                wait_until(functools.partial(healthy, p), 60, f"{name} health")
            yield Deployment(url, target.redis_url, prefix, port, procs)
        finally:
            _stop(procs.values())
            _forget_prefix(target.redis_url, prefix)


def _command(service: str) -> list[str]:
    """`weelo run SERVICE`; under cProfile (stats in /tmp/bench-SERVICE.prof) when the service
    is named in `BENCH_PROFILE` (comma-separated), to see where its time goes."""
    if service not in os.environ.get("BENCH_PROFILE", "").split(","):
        return weelo("run", service)
    out = f"/tmp/bench-{service}.prof"
    return [sys.executable, "-m", "cProfile", "-o", out, "-m", "libs.cli", "run", service]


def _stop(procs: Any) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()


def _forget_prefix(redis_url: str, prefix: str) -> None:
    client = redis_sync.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds; 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy_seconds() -> float:
    """CPU-seconds every core of the machine spent not idle, since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _redis_pid(redis_url: str) -> int | None:
    info: Any = redis_sync.Redis.from_url(redis_url).info("server")
    pid = int(info.get("process_id", 0))
    return pid if Path(f"/proc/{pid}").exists() else None


def _postgres_pids(url: str) -> list[int]:
    """Backends connected to this database (the services' pools and relays)."""
    name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchall()
    return [int(r[0]) for r in rows]


def _redis_commands(redis_url: str) -> dict[str, tuple[int, int]]:
    """(calls, microseconds) of each command Redis has run, server-wide."""
    stats: Any = redis_sync.Redis.from_url(redis_url).info("commandstats")
    return {
        name.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"]))
        for name, v in stats.items()
    }


@dataclass
class CpuMeter:
    """CPU time of every part of the system over one measured phase, and the Redis commands
    run meanwhile."""

    deployment: Deployment
    start: dict[str, float] = field(default_factory=dict)
    spent: dict[str, float] = field(default_factory=dict)
    wall: float = 0.0
    commands: dict[str, tuple[int, int]] = field(default_factory=dict)

    def _sample(self) -> dict[str, float]:
        d = self.deployment
        sample = {name: _cpu_seconds(p.pid) for name, p in d.procs.items()}
        sample["PostgreSQL (this database's backends)"] = sum(
            _cpu_seconds(pid) for pid in _postgres_pids(d.database_url)
        )
        redis_pid = _redis_pid(d.redis_url)
        sample["Redis"] = _cpu_seconds(redis_pid) if redis_pid else 0.0
        sample["load generator"] = time.process_time()
        sample["whole machine"] = _machine_busy_seconds()
        return sample

    @contextlib.contextmanager
    def measure(self) -> Iterator[None]:
        redis_before = _redis_commands(self.deployment.redis_url)
        self.start, began = self._sample(), time.monotonic()
        yield
        self.wall = time.monotonic() - began
        end = self._sample()
        self.spent = {k: max(0.0, v - self.start.get(k, 0.0)) for k, v in end.items()}
        redis_after = _redis_commands(self.deployment.redis_url)
        self.commands = {
            name: (
                calls - redis_before.get(name, (0, 0))[0],
                usec - redis_before.get(name, (0, 0))[1],
            )
            for name, (calls, usec) in redis_after.items()
        }

    def redis_per_request(self, requests: int, top: int = 4) -> str:
        """The Redis commands that took most of its time, per request (server-wide counts)."""
        busiest = sorted(self.commands.items(), key=lambda kv: -kv[1][1])[:top]
        return " · ".join(
            f"{name} {calls / requests:.1f} calls, {usec / requests / 1000:.2f} ms"
            for name, (calls, usec) in busiest
        )

    def per_request(self, requests: int) -> str:
        """CPU milliseconds per request of each part, and the machine's load meanwhile."""
        parts = [
            f"{name} {seconds * 1000 / requests:.2f}"
            for name, seconds in self.spent.items()
            if name != "whole machine"
        ]
        ours = sum(v for k, v in self.spent.items() if k != "whole machine")
        busy = self.spent.get("whole machine", 0.0)
        return (
            f"{' · '.join(parts)} ms; the machine was busy {busy / self.wall:.2f} of "
            f"{os.cpu_count()} cores, {max(0.0, busy - ours) / self.wall:.2f} of it outside "
            "these processes"
        )


# --- the fleet and the broadcasts -------------------------------------------------------------


async def seed_vehicles(url: str, vehicles: Sequence[tuple[str, str, str, float, float]]) -> None:
    """Register (vehicle id, transporter id, type, lat, lng) as the broadcast service would: a
    `VehicleRegistered` event per vehicle and its read-model row, 1,000 to a transaction."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for i in range(0, len(vehicles), 1000):
            batch = vehicles[i : i + 1000]
            events = [
                (
                    f"fleet-vehicle.{v}",
                    0,
                    [
                        VehicleRegistered(
                            vehicle_id=v, transporter_id=t, vehicle_type=k, lat=a, lng=o
                        )
                    ],
                )
                for v, t, k, a, o in batch
            ]
            async with conn.transaction():
                await append_many(conn, events)
                await conn.execute(
                    "INSERT INTO vehicles (vehicle_id, transporter_id, vehicle_type, lat, lng,"
                    " version) SELECT *, 1 FROM unnest(%s::text[], %s::text[], %s::text[],"
                    " %s::float8[], %s::float8[])",
                    [list(column) for column in zip(*batch, strict=True)],
                )


def search_body(
    trucks: Sequence[tuple[str, int]], pickup: tuple[float, float], drop: tuple[float, float]
) -> bytes:
    return msgspec.json.encode(
        {
            "pickup": {"lat": pickup[0], "lng": pickup[1], "address": "pickup"},
            "drop": {"lat": drop[0], "lng": drop[1], "address": "drop"},
            "trucks": [{"vehicleType": t, "quantity": q} for t, q in trucks],
        }
    )


@dataclass(frozen=True)
class Slot:
    truck_request_id: str
    broadcast_id: str


async def new_broadcasts(
    d: Deployment, pool: ConnPool, count: int, per_type: int, types: Sequence[str] = TYPES
) -> list[Slot]:
    """`count` broadcasts of new customers, `per_type` trucks of each of `types`; their slots."""
    body = search_body([(t, per_type) for t in types], CENTRE, (13.03, 77.62))
    token = [d.token("customer", f"c-{uuid.uuid4().hex[:10]}") for _ in range(count)]
    answers = await asyncio.gather(
        *(pool.request("POST", "/v1/broadcasts", t, body) for t in token)
    )
    slots = []
    for status, raw in answers:
        created = msgspec.json.decode(raw)
        assert status == 201 and created["state"] == "broadcasting", raw
        assert created["notifiedTransporters"] == TRANSPORTERS, created["notifiedTransporters"]
        slots += [
            Slot(r["truckRequestId"], created["broadcastId"]) for r in created["truckRequests"]
        ]
    return slots


# --- attempts and their outcomes --------------------------------------------------------------


@dataclass
class Outcomes:
    latencies: list[float] = field(default_factory=list)
    wins: dict[str, tuple[str, str]] = field(default_factory=dict)  # slot -> (assignment, t)
    lost: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    def record(self, slot: str, transporter: str, status: int, raw: bytes, took: float) -> bool:
        """Count one answer; True when it settled the slot (won, or taken by someone else)."""
        self.latencies.append(took)
        if status == 200:
            won = msgspec.json.decode(raw)["assignments"]
            assert [a["truckRequestId"] for a in won] == [slot], raw
            assert slot not in self.wins, f"slot {slot} answered 200 twice"
            self.wins[slot] = (won[0]["assignmentId"], transporter)
            return True
        if status == 409 and b'"no_longer_available"' in raw:
            self.lost += 1
            return True
        code = msgspec.json.decode(raw).get("error", {}).get("code", "?") if raw else "?"
        self.errors[f"{status} {code}"] += 1
        return False

    def error_summary(self) -> str:
        return ", ".join(f"{n} x {kind}" for kind, n in self.errors.most_common()) or "none"


async def attempt(
    conn: HttpConn | ConnPool, d: Deployment, slot: str, transporter: str, out: Outcomes
) -> bool:
    began = time.monotonic()
    status, raw = await conn.request(
        "POST", f"/v1/truck-requests/{slot}/accept", d.token("transporter", transporter)
    )
    return out.record(slot, transporter, status, raw, time.monotonic() - began)


async def storm(d: Deployment, transporters: list[str], slots: list[Slot]) -> Outcomes:
    """Every transporter on its own connection accepts random slots it does not know to be
    taken (it learns from its own 409s and from every win), until none is left. A slot whose
    attempt failed (5xx) stays open: someone tries it again."""
    open_slots, out = {s.truck_request_id for s in slots}, Outcomes()
    conns = [await HttpConn(d.port).open() for _ in transporters]

    async def transporter_loop(conn: HttpConn, transporter: str, rng: random.Random) -> None:
        while open_slots:
            slot = rng.choice(tuple(open_slots))
            if await attempt(conn, d, slot, transporter, out):
                open_slots.discard(slot)

    await asyncio.gather(
        *(
            transporter_loop(c, t, random.Random(i))
            for i, (c, t) in enumerate(zip(conns, transporters, strict=True))
        )
    )
    await asyncio.gather(*(c.close() for c in conns))
    return out


async def steady(
    d: Deployment, transporters: list[str], slots: list[Slot], rate: float, seconds: float
) -> Outcomes:
    """`rate` attempts a second at fixed times by random transporters, each slot tried by two of
    them one after the other (one wins, one is told it is gone); latency from the scheduled
    time (open loop)."""
    pool, out, rng = ConnPool(d.port), Outcomes(), random.Random(7)
    await pool.fill(40)
    open_slots = [s.truck_request_id for s in slots]
    rng.shuffle(open_slots)
    start = time.monotonic() + 0.5

    async def at(due: float, slot: str, transporter: str) -> None:
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        status, raw = await pool.request(
            "POST", f"/v1/truck-requests/{slot}/accept", d.token("transporter", transporter)
        )
        out.record(slot, transporter, status, raw, time.monotonic() - due)

    count = int(rate * seconds)
    await asyncio.gather(
        *(
            at(start + i / rate, open_slots[i // STEADY_TRIES_PER_SLOT], rng.choice(transporters))
            for i in range(count)
        )
    )
    await pool.close()
    return out


async def burst(d: Deployment, transporters: list[str], slot: Slot) -> tuple[Outcomes, float]:
    """Every transporter accepts the one slot at the same moment; seconds until the last answer."""
    conns = [await HttpConn(d.port).open() for _ in transporters]
    out, gate = Outcomes(), asyncio.Event()

    async def one(conn: HttpConn, transporter: str) -> None:
        await gate.wait()
        await attempt(conn, d, slot.truck_request_id, transporter, out)

    tasks = [asyncio.create_task(one(c, t)) for c, t in zip(conns, transporters, strict=True)]
    began = time.monotonic()
    gate.set()
    await asyncio.gather(*tasks)
    took = time.monotonic() - began
    await asyncio.gather(*(c.close() for c in conns))
    return out, took


def check_one_winner_per_slot(url: str, slots: Sequence[Slot], wins: dict[str, Any]) -> int:
    """At most one assignment per slot; every slot answered 200 held by that winner. The number
    of slots held without a 200 (an accept that committed but was answered 5xx)."""
    ids = [s.truck_request_id for s in slots]
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT truck_request_id, assignment_id, transporter_id FROM assignments"
            " WHERE truck_request_id = ANY(%s)",
            (ids,),
        ).fetchall()
    held: dict[str, tuple[str, str]] = {}
    for slot, assignment, transporter in rows:
        assert slot not in held, f"slot {slot} has two assignments"
        held[slot] = (assignment, transporter)
    assert all(held.get(slot) == won for slot, won in wins.items()), "a 200 is not in the database"
    return len(held) - len(wins)


def caught_up(d: Deployment) -> bool:
    """The outbox is empty and every consumer group of every event stream has read and
    acknowledged everything in it."""
    with psycopg.connect(d.database_url) as conn:
        row = conn.execute("SELECT count(*) FROM outbox").fetchone()
    if row is None or row[0]:
        return False
    client = redis_sync.Redis.from_url(d.redis_url)
    for category in CATEGORIES:
        stream = events_stream(d.prefix, category)
        if not client.exists(stream):
            continue
        last: Any = client.xinfo_stream(stream)["last-generated-id"]
        groups: Any = client.xinfo_groups(stream)
        if any(g["pending"] or g["last-delivered-id"] != last for g in groups):
            return False
    return True


def wait_caught_up(d: Deployment, what: str, within: float = 300.0) -> None:
    deadline = time.monotonic() + within
    while not caught_up(d):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not handled within {within:.0f} s")
        time.sleep(0.1)


def settle(d: Deployment, figures: Figures, phase: str) -> None:
    """Wait until the events of a phase are all handled (so the next phase does not pay for
    them); a row saying how long that took after the phase's last answer."""
    began = time.monotonic()
    wait_caught_up(d, f"the events of the {phase} phase")
    figures.add(
        f"{phase}: every event handled (outbox empty, every consumer group acknowledged all)",
        f"{(time.monotonic() - began) * 1000:,.0f} ms after the last answer",
    )


# --- the scenario -----------------------------------------------------------------------------


async def _measure(d: Deployment, figures: Figures) -> None:
    transporters = [f"t-{i:04d}" for i in range(TRANSPORTERS)]
    await seed_vehicles(
        d.database_url,
        [(f"v-{t}-{k}", t, k, CENTRE[0], CENTRE[1]) for t in transporters for k in TYPES],
    )
    setup = ConnPool(d.port)
    storm_slots = [await new_broadcasts(d, setup, STORM_BROADCASTS, 20) for _ in range(STORM_RUNS)]
    steady_count = STEADY_RATE * STEADY_SECONDS // STEADY_TRIES_PER_SLOT // 200
    steady_slots = await new_broadcasts(d, setup, steady_count, 20)
    burst_slots = await new_broadcasts(d, setup, BURSTS, 1, TYPES[:1])
    await setup.close()
    wait_caught_up(d, "the setup's events")
    rates = [await _storm_phase(d, figures, transporters, slots) for slots in storm_slots]
    median = statistics.median(rates)
    figures.rows.insert(
        0,
        (
            f"storm: {TRANSPORTERS} transporters racing over {len(storm_slots[0]):,} slots, "
            f"median of {STORM_RUNS} runs",
            f"**{median:,.0f} accept attempts/s** ({verdict(median >= STORM_TARGET)}: at least "
            f"{STORM_TARGET}); runs: " + " · ".join(f"{r:,.0f}" for r in rates),
        ),
    )
    await _steady_phase(d, figures, transporters, steady_slots)
    await _burst_phase(d, figures, transporters, burst_slots)


async def _storm_phase(
    d: Deployment, figures: Figures, transporters: list[str], slots: list[Slot]
) -> float:
    """One storm over `slots`: its rows, and its rate (attempts/s)."""
    meter = CpuMeter(d)
    with meter.measure():
        out = await storm(d, transporters, slots)
    unanswered = check_one_winner_per_slot(d.database_url, slots, out.wins)
    assert len(out.wins) + unanswered == len(slots), "a slot was left open"
    attempts = len(out.latencies)
    rate = attempts / meter.wall
    figures.add(
        f"storm: {TRANSPORTERS} transporters racing over {len(slots):,} slots (closed loop)",
        f"{rate:,.0f} accept attempts/s ({attempts:,} attempts in "
        f"{meter.wall:.2f} s: {len(out.wins):,} won, {out.lost:,} answered 409 "
        "no_longer_available); exactly one winner per slot, checked in PostgreSQL",
    )
    figures.latency("storm: latency of an attempt", out.latencies)
    figures.add("storm: CPU per attempt", meter.per_request(attempts))
    figures.add("storm: Redis commands per attempt", meter.redis_per_request(attempts))
    _errors(figures, "storm", out, unanswered)
    settle(d, figures, "storm")
    return rate


async def _steady_phase(
    d: Deployment, figures: Figures, transporters: list[str], slots: list[Slot]
) -> None:
    meter = CpuMeter(d)
    with meter.measure():
        out = await steady(d, transporters, slots, STEADY_RATE, STEADY_SECONDS)
    unanswered = check_one_winner_per_slot(d.database_url, slots, out.wins)
    p99 = percentile(out.latencies, 99)
    figures.latency(
        f"steady: {STEADY_RATE} attempts/s offered for {STEADY_SECONDS} s (open loop, from the "
        f"scheduled time); target p99 under {P99_TARGET_S * 1000:.0f} ms: "
        f"{verdict(p99 < P99_TARGET_S)}",
        out.latencies,
    )
    figures.add("steady: CPU per attempt", meter.per_request(len(out.latencies)))
    figures.add("steady: Redis commands per attempt", meter.redis_per_request(len(out.latencies)))
    _errors(figures, "steady", out, unanswered)
    settle(d, figures, "steady")


async def _burst_phase(
    d: Deployment, figures: Figures, transporters: list[str], slots: list[Slot]
) -> None:
    took, latencies, errors = [], [], Outcomes()
    for slot in slots:
        out, seconds = await burst(d, transporters, slot)
        unanswered = check_one_winner_per_slot(d.database_url, [slot], out.wins)
        assert len(out.wins) + unanswered == 1, "a burst's slot was left open"
        took.append(seconds)
        latencies += out.latencies
        errors.errors.update(out.errors)
    figures.add(
        f"burst: {TRANSPORTERS} simultaneous accepts on one slot, until the last answer",
        " · ".join(f"{s * 1000:.0f} ms" for s in took)
        + f" ({len(took)} bursts, each won exactly once; target under {BURST_TARGET_S:.0f} s: "
        f"{verdict(max(took) < BURST_TARGET_S)})",
    )
    figures.latency("burst: latency of each of those accepts", latencies)
    _errors(figures, "burst", errors, 0)


def _errors(figures: Figures, phase: str, out: Outcomes, unanswered: int) -> None:
    """A row for answers other than 200 / 409 no_longer_available, when there were any."""
    if out.errors or unanswered:
        figures.add(
            f"{phase}: other answers",
            f"{out.error_summary()}; {unanswered} slots won by an accept answered with an error",
        )


def run() -> Figures:
    figures = Figures("accept-storm", "make bench SCENARIOS=accept-storm")
    with deployment() as d:
        uvloop.run(_measure(d, figures))
    figures.notes.append(
        "One gateway, broadcast, acceptance and timer process (`weelo run`), PostgreSQL, Redis "
        "and the load generator share the machine. Accepts use `POST /v1/truck-requests/{id}/"
        "accept`; each transporter has its own keep-alive connection (storm, bursts) or takes "
        "one from a pool (steady). CPU per attempt is each process's user+system time over the "
        "phase divided by the attempts (PostgreSQL: the backends of the scratch database; "
        "'outside these processes' is what the rest of the machine used meanwhile, such as "
        "other test runs). The fan-out process runs the realtime projector (its own row), and "
        "Redis's share the inbox deliveries it makes (`evalsha`, one call per event): a claim "
        "sends `broadcast_updated` to each transporter notified of the broadcast, here 200, "
        "unless a later claim of the broadcast is already in the projector's batch (then only "
        "the newest goes out). The process that holds the outbox relay's lock (any of them) "
        "also carries the relay's share. Redis command counts are server-wide. The storm runs "
        f"{STORM_RUNS} times over fresh broadcasts: on this machine consecutive runs of the same "
        "code differ by up to a third, and every process's CPU per attempt moves with them "
        "(the load generator's too, whose work is fixed), so the machine's own speed varies."
    )
    return figures
