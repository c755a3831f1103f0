"""`accept-storm`: transporters racing for truck requests through the gateway, end to end, and
two claims straight on PostgreSQL beside it (`bench/peers/claims_pg.py`).

A real deployment (`weelo run` gateway, broadcast, acceptance, timer and fan-out) on a scratch
database; the fleet (200 transporters, each with one vehicle of each of 10 types) is written
straight into the event store and read model; broadcasts are created through the HTTP API (10
types x 20 = 200 slots each), so every broadcast reaches all 200 transporters. Three
measurements:

1. storm (closed loop), `STORM_RUNS` times over fresh broadcasts: 200 transporters, one
   connection each (opened beforehand), race over 1,000 slots; each picks a random slot it does
   not know to be taken and accepts it, until every slot is won. Its rate is the attempts over
   the time from the first attempt sent to the last answer;
2. steady (open loop): 200 accept attempts/s at fixed times; latency counts from the scheduled
   time, so a slow answer also delays the measurement of the ones queued behind it;
3. bursts: 200 transporters accept one slot at the same moment; time until the last answer.

After each phase PostgreSQL must hold exactly one assignment per slot, the one its 200 named
(`winners`); a phase's last event handled is read from the system's own records once all are
handled (`settle`). A request whose connection closed before its answer is never sent again: it
is counted, as an error, in the phase's `connection resets` row. Then the peers race over a
table of as many slots, in the same run (`claims_pg`), and the first rows give the targets (at
least `STORM_TARGET` attempts/s, median of the runs; steady p99 at most `P99_TARGET_S`), met or
missed, and ours against each peer.

The load generator is this process: a small HTTP/1.1 client on raw keep-alive connections, about
0.06 ms of CPU per request, where httpx took 0.9 ms (ten clients) to 2.5 ms (one client: its
pool is rescanned for every request) on this machine, which would make the client a large share
of the two cores. Its CPU time is reported beside each service's, PostgreSQL's and Redis's, with
the Redis commands run per request.

Smaller trial runs: `BENCH_STORM_RUNS`, `BENCH_STEADY_SECONDS`, `BENCH_BURSTS`.
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
    cpu_seconds,
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
from bench.peers import claims_pg
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
STORM_TARGET = 1_000  # attempts/s, the median of STORM_RUNS runs (issue 15)
P99_TARGET_S = 0.025  # the steady phase's p99 at STEADY_RATE (issue 15)
BURST_TARGET_S = 1.0
SECRET = "bench-access-secret-" + "x" * 40


# --- a minimal HTTP/1.1 client on keep-alive connections ---------------------------------------


RESET = 0  # the status `HttpConn.request` gives when the connection closed before the answer


class HttpConn:
    """One keep-alive connection to the gateway; one request at a time."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.resets = 0  # requests whose connection closed or reset before their answer came
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def open(self) -> HttpConn:
        self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self.port)
        return self

    async def request(
        self, method: str, path: str, token: str, body: bytes = b""
    ) -> tuple[int, bytes]:
        """(status, body), or (RESET, b"") when the connection closed or was reset before the
        answer came. Such a request is counted in `resets` and never sent again (the server may
        have acted on it); the next request opens a new connection."""
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        try:
            if self._writer is None:
                await self.open()
            return await self._exchange(head + body)
        except (asyncio.IncompleteReadError, ConnectionError):
            self.resets += 1
            await self.close()
            return RESET, b""

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

    @property
    def resets(self) -> int:
        """Requests of every connection of the pool that got no answer (see `HttpConn`)."""
        return sum(c.resets for c in self._all)

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
        sample = {name: cpu_seconds(p.pid) for name, p in d.procs.items()}
        sample["PostgreSQL (this database's backends)"] = sum(
            cpu_seconds(pid) for pid in _postgres_pids(d.database_url)
        )
        redis_pid = _redis_pid(d.redis_url)
        sample["Redis"] = cpu_seconds(redis_pid) if redis_pid else 0.0
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
    resets: int = 0  # attempts whose connection closed before their answer (never sent again)
    answered_twice: int = 0  # slots answered 200 more than once
    errors: Counter[str] = field(default_factory=Counter)
    last_answer: float = 0.0  # time.time() of the latest answer (or reset)

    def record(self, slot: str, transporter: str, status: int, raw: bytes, took: float) -> bool:
        """Count one answer; True when it settled the slot (won, or taken by someone else). A
        connection reset is an error (the slot stays open for anyone to try again)."""
        self.latencies.append(took)
        self.last_answer = max(self.last_answer, time.time())
        if status == RESET:
            self.resets += 1
            self.errors["connection reset before the answer (not sent again)"] += 1
            return False
        if status == 200:
            won = msgspec.json.decode(raw)["assignments"]
            assert [a["truckRequestId"] for a in won] == [slot], raw
            self.answered_twice += slot in self.wins
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


async def open_connections(port: int, count: int) -> list[HttpConn]:
    """`count` keep-alive connections to the gateway, opened one after another."""
    return [await HttpConn(port).open() for _ in range(count)]


async def storm(
    d: Deployment, conns: Sequence[HttpConn], transporters: list[str], slots: list[Slot]
) -> tuple[Outcomes, float]:
    """Every transporter on its own connection (opened beforehand) accepts random slots it does
    not know to be taken (it learns from its own 409s and from every win), until none is left. A
    slot whose attempt failed (5xx, reset) stays open: someone tries it again. Also when the
    first attempt went out (time.time())."""
    open_slots, out = {s.truck_request_id for s in slots}, Outcomes()

    async def transporter_loop(conn: HttpConn, transporter: str, rng: random.Random) -> None:
        while open_slots:
            slot = rng.choice(tuple(open_slots))
            if await attempt(conn, d, slot, transporter, out):
                open_slots.discard(slot)

    began = time.time()
    await asyncio.gather(
        *(
            transporter_loop(c, t, random.Random(i))
            for i, (c, t) in enumerate(zip(conns, transporters, strict=True))
        )
    )
    await asyncio.gather(*(c.close() for c in conns))
    return out, began


async def steady(
    d: Deployment, pool: ConnPool, transporters: list[str], slots: list[Slot], seconds: float
) -> Outcomes:
    """STEADY_RATE attempts a second at fixed times by random transporters, each slot tried by
    two of them one after the other (one wins, one is told it is gone); latency from the
    scheduled time (open loop)."""
    out, rng, rate = Outcomes(), random.Random(7), STEADY_RATE
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
    return out


async def burst(d: Deployment, transporters: list[str], slot: Slot) -> tuple[Outcomes, float]:
    """Every transporter accepts the one slot at the same moment; seconds until the last answer."""
    conns = await open_connections(d.port, len(transporters))
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


@dataclass(frozen=True)
class Winners:
    """What PostgreSQL holds for a phase's slots, against what the answers said."""

    slots: int
    held: int  # slots with an assignment
    doubly_held: int  # slots with more than one assignment (the schema's unique index forbids it)
    answered_twice: int  # slots answered 200 more than once
    not_as_answered: int  # slots answered 200 whose assignment in PostgreSQL is another one
    unanswered: int  # slots held by an assignment no 200 announced (answered with an error)

    @property
    def exactly_one(self) -> bool:
        """Every slot held, once, by the winner its 200 named."""
        return self.held == self.slots and not (
            self.doubly_held or self.answered_twice or self.not_as_answered
        )

    def summary(self) -> str:
        if self.exactly_one:
            return f"exactly one winner for each of the {self.slots:,} slots, checked in PostgreSQL"
        return (
            f"**not exactly one winner per slot**: {self.held:,} of {self.slots:,} slots held, "
            f"{self.doubly_held} twice; {self.answered_twice} answered 200 twice; "
            f"{self.not_as_answered} held by another than their 200's winner"
        )


def winners(url: str, slots: Sequence[Slot], out: Outcomes) -> Winners:
    """Compare the assignments PostgreSQL holds for `slots` with the 200s of `out`."""
    ids = [s.truck_request_id for s in slots]
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT truck_request_id, assignment_id, transporter_id FROM assignments"
            " WHERE truck_request_id = ANY(%s)",
            (ids,),
        ).fetchall()
    per_slot = Counter(slot for slot, _, _ in rows)
    held = {slot: (assignment, transporter) for slot, assignment, transporter in rows}
    return Winners(
        slots=len(ids),
        held=len(held),
        doubly_held=sum(1 for n in per_slot.values() if n > 1),
        answered_twice=out.answered_twice,
        not_as_answered=sum(1 for slot, won in out.wins.items() if held.get(slot) != won),
        unanswered=sum(1 for slot in held if slot not in out.wins),
    )


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


@dataclass(frozen=True)
class Handled:
    """When the newest event went through each step, from the system's own records (epoch s)."""

    committed: float  # its `recorded_at`: clock_timestamp() at the insert, in its transaction
    relayed: float  # the event streams' newest entry id: Redis's clock when the relay added it
    projected: float  # the projector's newest `projected_events.projected_at`, written once the
    # event's messages are in their inboxes (the event is acknowledged right after)


def last_handled(d: Deployment) -> Handled:
    """Read `Handled` from PostgreSQL and Redis (once everything is handled: `wait_caught_up`)."""
    with psycopg.connect(d.database_url) as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM (SELECT max(recorded_at) FROM events)),"
            " extract(epoch FROM (SELECT max(projected_at) FROM projected_events))"
        ).fetchone()
    assert row is not None
    client = redis_sync.Redis.from_url(d.redis_url)
    relayed = 0.0
    for category in CATEGORIES:
        stream = events_stream(d.prefix, category)
        if client.exists(stream):
            last: Any = client.xinfo_stream(stream)["last-generated-id"]
            text = last.decode() if isinstance(last, bytes) else str(last)
            relayed = max(relayed, int(text.split("-")[0]) / 1000)
    return Handled(float(row[0] or 0), relayed, float(row[1] or 0))


def _after(seconds: float) -> str:
    return f"{abs(seconds) * 1000:,.0f} ms {'after' if seconds >= 0 else 'before'}"


def settle(d: Deployment, figures: Figures, phase: str, last_answer: float) -> None:
    """Wait until the events of a phase are all handled (so the next phase does not pay for
    them); then a row saying when the last of them was handled, counted from the phase's last
    answer (`last_answer`, time.time()) and read from the system's records (`last_handled`), so
    that neither this wait nor the CPU sampling before it is in the figure."""
    wait_caught_up(d, f"the events of the {phase} phase")
    h = last_handled(d)
    figures.add(
        f"{phase}: last event handled (then: outbox empty, every consumer group acknowledged all)",
        f"{_after(h.projected - last_answer)} the last answer (the projector's record of it); "
        f"committed {_after(h.committed - last_answer)}, on its stream "
        f"{_after(h.relayed - last_answer)}",
    )


def load_text(before: float) -> str:
    """The machine's load average (1 min) at a phase's start and now, at its end."""
    return f"load average {before:.2f} → {os.getloadavg()[0]:.2f}"


def _env_int(name: str, default: int) -> int:
    """A size from the environment (smaller for a trial run), else the scenario's own."""
    return int(os.environ.get(name, default))


# --- the scenario -----------------------------------------------------------------------------


Row = tuple[str, str]  # (measure, result) of the report's table


@dataclass(frozen=True)
class StormRun:
    rate: float  # attempts/s, from the first attempt sent to the last answer
    p50: float  # seconds
    p99: float
    winners: Winners
    load: tuple[float, float]  # load average (1 min) at its start and end


@dataclass
class Measured:
    storms: list[StormRun] = field(default_factory=list)
    steady_p99: float = 0.0
    steady_winners: Winners | None = None
    steady_load: str = ""
    load: float = 0.0  # at the start of the storms


async def _measure(d: Deployment, figures: Figures) -> Measured:
    runs = _env_int("BENCH_STORM_RUNS", STORM_RUNS)
    steady_seconds = _env_int("BENCH_STEADY_SECONDS", STEADY_SECONDS)
    transporters = [f"t-{i:04d}" for i in range(TRANSPORTERS)]
    await seed_vehicles(
        d.database_url,
        [(f"v-{t}-{k}", t, k, CENTRE[0], CENTRE[1]) for t in transporters for k in TYPES],
    )
    setup = ConnPool(d.port)
    storm_slots = [await new_broadcasts(d, setup, STORM_BROADCASTS, 20) for _ in range(runs)]
    steady_count = max(1, STEADY_RATE * steady_seconds // STEADY_TRIES_PER_SLOT // 200)
    steady_slots = await new_broadcasts(d, setup, steady_count, 20)
    burst_slots = await new_broadcasts(d, setup, _env_int("BENCH_BURSTS", BURSTS), 1, TYPES[:1])
    await setup.close()
    wait_caught_up(d, "the setup's events")
    measured = Measured(load=os.getloadavg()[0])
    for i, slots in enumerate(storm_slots, 1):
        measured.storms.append(await _storm_phase(d, figures, transporters, slots, f"{i}/{runs}"))
    measured.steady_p99, measured.steady_winners, measured.steady_load = await _steady_phase(
        d, figures, transporters, steady_slots, steady_seconds
    )
    await _burst_phase(d, figures, transporters, burst_slots)
    return measured


async def _storm_phase(
    d: Deployment, figures: Figures, transporters: list[str], slots: list[Slot], run: str
) -> StormRun:
    """One storm over `slots`: its rows, and its rate and latency."""
    conns = await open_connections(d.port, len(transporters))
    meter, load = CpuMeter(d), os.getloadavg()[0]
    with meter.measure():
        out, began = await storm(d, conns, transporters, slots)
    loads, load_after = load_text(load), os.getloadavg()[0]
    held = winners(d.database_url, slots, out)
    attempts, took = len(out.latencies), out.last_answer - began
    figures.add(
        f"storm {run}: {TRANSPORTERS} transporters racing over {len(slots):,} slots (closed loop)",
        f"{attempts / took:,.0f} accept attempts/s ({attempts:,} attempts, the first sent to the "
        f"last answered in {took:.2f} s: {len(out.wins):,} won, {out.lost:,} answered 409 "
        f"no_longer_available); {held.summary()}; {loads}",
    )
    figures.latency(f"storm {run}: latency of an attempt", out.latencies)
    figures.add(f"storm {run}: CPU per attempt", meter.per_request(attempts))
    figures.add(f"storm {run}: Redis commands per attempt", meter.redis_per_request(attempts))
    _problems(figures, f"storm {run}", out, held)
    settle(d, figures, f"storm {run}", out.last_answer)
    ms = [s * 1000 for s in out.latencies]
    return StormRun(
        attempts / took, statistics.median(ms), percentile(ms, 99), held, (load, load_after)
    )


async def _steady_phase(
    d: Deployment, figures: Figures, transporters: list[str], slots: list[Slot], seconds: int
) -> tuple[float, Winners, str]:
    """The open-loop phase's rows; its p99 (s), winners and load averages."""
    pool = ConnPool(d.port)
    await pool.fill(40)
    meter, load = CpuMeter(d), os.getloadavg()[0]
    with meter.measure():
        out = await steady(d, pool, transporters, slots, seconds)
    loads = load_text(load)
    await pool.close()
    held = winners(d.database_url, slots, out)
    p99 = percentile(out.latencies, 99)
    figures.latency(
        f"steady: {STEADY_RATE} attempts/s offered for {seconds} s (open loop, from the "
        f"scheduled time); target p99 at most {P99_TARGET_S * 1000:.0f} ms: "
        f"{verdict(p99 <= P99_TARGET_S)}; {loads}",
        out.latencies,
    )
    figures.add("steady: winners", held.summary())
    figures.add("steady: CPU per attempt", meter.per_request(len(out.latencies)))
    figures.add("steady: Redis commands per attempt", meter.redis_per_request(len(out.latencies)))
    _problems(figures, "steady", out, held)
    settle(d, figures, "steady", out.last_answer)
    return p99, held, loads


async def _burst_phase(
    d: Deployment, figures: Figures, transporters: list[str], slots: list[Slot]
) -> None:
    took, latencies, everything, load = [], [], Outcomes(), os.getloadavg()[0]
    all_once = True
    for slot in slots:
        out, seconds = await burst(d, transporters, slot)
        held = winners(d.database_url, [slot], out)
        all_once = all_once and held.exactly_one
        took.append(seconds)
        latencies += out.latencies
        everything.errors.update(out.errors)
        everything.resets += out.resets
        everything.latencies += out.latencies
    once = "each won exactly once" if all_once else "**not each won exactly once**"
    figures.add(
        f"burst: {TRANSPORTERS} simultaneous accepts on one slot, until the last answer",
        " · ".join(f"{s * 1000:.0f} ms" for s in took)
        + f" ({len(took)} bursts, {once}; target under {BURST_TARGET_S:.0f} s: "
        f"{verdict(max(took) < BURST_TARGET_S)}); {load_text(load)}",
    )
    figures.latency("burst: latency of each of those accepts", latencies)
    _problems(figures, "burst", everything, None)


def _problems(figures: Figures, phase: str, out: Outcomes, held: Winners | None) -> None:
    """The connection-reset row (always), and a row for answers other than 200 / 409
    no_longer_available when there were any."""
    figures.add(
        f"{phase}: connection resets",
        f"{out.resets:,} of {len(out.latencies):,} attempts got no answer (each counted as an "
        "error, never sent again)",
    )
    unanswered = held.unanswered if held else 0
    if out.errors or unanswered:
        figures.add(
            f"{phase}: other answers",
            f"{out.error_summary()}; {unanswered} slots won by an accept answered with an error",
        )


def _summary(measured: Measured, peers: dict[str, list[claims_pg.Claims]]) -> list[Row]:
    """The rows that go first: the targets, met or missed, and the peers beside our storm."""
    storms = measured.storms
    median = statistics.median(r.rate for r in storms)
    ours_p99 = statistics.median(r.p99 for r in storms)
    once = sum(r.winners.exactly_one for r in storms)
    steady_once = measured.steady_winners is not None and measured.steady_winners.exactly_one
    rows = [
        (
            f"target: storm at least {STORM_TARGET:,} accept attempts/s (median of {len(storms)} "
            "runs), exactly one winner per slot",
            f"{verdict(median >= STORM_TARGET and once == len(storms))}: **{median:,.0f} accept "
            "attempts/s** (runs " + " · ".join(f"{r.rate:,.0f}" for r in storms) + "); exactly "
            f"one winner per slot in {once} of {len(storms)} runs; load average "
            f"{min(r.load[0] for r in storms):.2f}-{max(r.load[1] for r in storms):.2f}",
        ),
        (
            f"target: steady p99 at most {P99_TARGET_S * 1000:.0f} ms at {STEADY_RATE} "
            "attempts/s, exactly one winner per slot",
            f"{verdict(measured.steady_p99 <= P99_TARGET_S and steady_once)}: p99 "
            f"{measured.steady_p99 * 1000:.1f} ms; "
            + ("exactly one winner per slot" if steady_once else "**not one winner per slot**")
            + f"; {measured.steady_load}",
        ),
        (
            f"ours: end-to-end accept storm (HTTP → gateway → acceptance → PostgreSQL), median "
            f"of {len(storms)} runs",
            f"{median:,.0f} attempts/s · p50 {statistics.median(r.p50 for r in storms):.1f} ms · "
            f"p99 {ours_p99:.1f} ms (medians of the runs); exactly one winner per slot in {once} "
            f"of {len(storms)} runs",
        ),
    ]
    for peer, runs in peers.items():
        rows += _peer_rows(peer, runs, median, ours_p99)
    return rows


def _peer_rows(
    peer: str, runs: list[claims_pg.Claims], ours_rate: float, ours_p99_ms: float
) -> list[Row]:
    """A peer's row (median of its runs) and ours against it."""
    rate = statistics.median(r.rate for r in runs)
    p50 = statistics.median(statistics.median(r.latencies) * 1000 for r in runs)
    p99 = statistics.median(percentile(r.latencies, 99) * 1000 for r in runs)
    attempts = sum(len(r.latencies) for r in runs)
    retries, errors = sum(r.retries for r in runs), sum(r.errors for r in runs)
    once = sum(r.winners_ok for r in runs)
    loads = f"load average {min(r.load[0] for r in runs):.2f}-{max(r.load[1] for r in runs):.2f}"
    return [
        (
            f"peer: {claims_pg.PEERS[peer][1]}, straight on PostgreSQL ({claims_pg.CLIENTS} "
            f"clients, {claims_pg.POOL_SIZE} connections), median of {len(runs)} runs",
            f"{rate:,.0f} attempts/s (runs " + " · ".join(f"{r.rate:,.0f}" for r in runs) + ") · "
            f"p50 {p50:.1f} ms · p99 {p99:.1f} ms; {retries:,} retries "
            f"({retries / attempts:.2f} per attempt), {errors} gave up; exactly one winner per "
            f"slot in {once} of {len(runs)} runs, checked in PostgreSQL; the clients' CPU "
            f"{sum(r.client_cpu_s for r in runs) * 1000 / attempts:.2f} ms per attempt; {loads}",
        ),
        (
            f"ours ÷ {peer}",
            f"{ours_rate / rate:.2f}x its attempts/s ({ours_rate:,.0f} against {rate:,.0f}), "
            f"{ours_p99_ms / p99:.1f}x its p99 ({ours_p99_ms:,.0f} against {p99:,.0f} ms)",
        ),
    ]


def run() -> Figures:
    figures = Figures("accept-storm", "make bench SCENARIOS=accept-storm")
    with deployment() as d:
        measured = uvloop.run(_measure(d, figures))
    with scratch_database(servers().database_url) as url:
        peers = uvloop.run(claims_pg.measure(url, len(measured.storms)))
    figures.rows[:0] = _summary(measured, peers)
    figures.notes.append(
        "One gateway, broadcast, acceptance, timer and fan-out process (`weelo run`), "
        "PostgreSQL, Redis and the load generator share the machine. Accepts use `POST "
        "/v1/truck-requests/{id}/accept`; each transporter has its own keep-alive connection "
        "(storm, bursts), opened before the phase, or takes one from a pool of 40 (steady). A "
        "storm's rate is its attempts over the time from the first attempt sent to the last "
        "answer. A request whose connection closed or reset before its answer is counted (the "
        "`connection resets` rows) as an error and never sent again. CPU per attempt is each "
        "process's user+system time over the phase divided by the attempts (PostgreSQL: the "
        "backends of the scratch database; 'outside these processes' is what the rest of the "
        "machine used meanwhile, such as other test runs). The fan-out process runs the realtime "
        "projector (its own row), and Redis's share the inbox deliveries it makes (`evalsha`, "
        "one call per event): a claim sends `broadcast_updated` to each transporter notified of "
        "the broadcast, here 200, unless a later claim of the broadcast is already in the "
        "projector's batch (then only the newest goes out). The process that holds the outbox "
        "relay's lock (any of them) also carries the relay's share. Redis command counts are "
        "server-wide."
    )
    figures.notes.append(
        "'Last event handled' is read, once every event is handled, from the system's own "
        "records and counted from the phase's last answer: the newest event's `recorded_at` "
        "(committed), the newest entry id of the event streams (on its stream: Redis's clock "
        "when the relay added it) and the projector's newest `projected_events.projected_at` "
        "(written once that event's messages were in their inboxes, just before it is "
        "acknowledged): the projector is the last consumer of every claim. The timer's group "
        "keeps no time of its own; it had acknowledged every event when the check found them "
        "all handled. The polling that finds that moment is not in the figure."
    )
    figures.notes.append(
        "The peers run in the same `make bench` run, after our deployment stopped (so that "
        "both fit PostgreSQL's shared 100 connections), on the same PostgreSQL: "
        f"{claims_pg.CLIENTS} asyncio clients with psycopg share a pool of "
        f"{claims_pg.POOL_SIZE} connections (an attempt's time includes its wait for one) and "
        "race as our storm's transporters do over a scratch table like our slots (one row per "
        f"truck slot, {claims_pg.BROADCASTS} broadcasts of {claims_pg.SLOTS_PER_BROADCAST}). "
        "`serializable` is the old plan: BEGIN ISOLATION LEVEL SERIALIZABLE, SELECT the slot, "
        "UPDATE it if open, COMMIT; a serialization failure (40001) is retried after a random "
        f"backoff of up to 1 ms doubling to {claims_pg.BACKOFF_CAP_S * 1000:.0f} ms. "
        "`conditional` is one autocommit `UPDATE ... SET state = 'accepted', assignee = $1 "
        "WHERE slot_id = $2 AND state = 'open'` (the plain conditional UPDATE of the slot the "
        "client chose, as our accept names its slot, rather than SKIP LOCKED's any open slot). "
        "Both are PostgreSQL alone: no HTTP, authentication, notified-transporter check, "
        "events, read models or fan-out, all of which ours does. PostgreSQL runs with the "
        "settings it has for everyone; psycopg and its pool keep their defaults but for the "
        "pool's size. Ratios compare the medians."
    )
    figures.notes.append(
        f"Load average (1 min) {measured.load:.2f} when the storms began and "
        f"{os.getloadavg()[0]:.2f} at the end, on {os.cpu_count()} cores; other work (other "
        "engineers' tests and benchmarks) shares this machine: compare runs, not single numbers."
    )
    return figures
