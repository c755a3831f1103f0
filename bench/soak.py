"""`soak`: the city-scale soak, two copies of every service under a steady city's load for 10
minutes; per minute, every endpoint's latency and errors and every process's memory.

Not part of a plain `make bench` (it takes over ten minutes): `make bench SCENARIOS=soak` runs
it (`bench/__main__.py` leaves it out of the default list).

The deployment: two `weelo run` processes of each of gateway, broadcast, acceptance, timer,
presence and fan-out on a scratch database of the shared PostgreSQL (`DB_POOL_SIZE` 6 for the
gateways and fan-outs, 5 for the rest: the fewest each accepts, one more for a gateway, so the
twelve hold at most 64 of the server's 100 connections) and a redis-server of the benchmark's
own (the shared one's settings: no snapshots, no AOF), so that its `used_memory` is this
system's alone. The city (`bench/soak_load.py`): 10,000 transporters with 50,000 vehicles of 10
types spread over a 100 x 100 km square, 5,000 drivers (one for every second transporter), all
registered through the HTTP API before the clock starts; then every driver goes online. During
the soak: journeys (search, accept, driver assignment for a share, a cancel for one in ten) start
at 20 searches/s; half the drivers heartbeat over HTTP every 10 s, the other half hold a
WebSocket (an open driver socket is its heartbeat); 1,000 customers and 1,000 transporters hold
sockets that only receive (`bench/soak_sockets.py`, one process per gateway). Each user talks
to one gateway, split evenly.

Every 10 s: each service process's VmRSS (/proc/PID/status), Redis's `used_memory` (INFO
memory), the scratch database's `pg_database_size` and the load average. Reported per minute:
each endpoint's p50 / p99 (from the time the request was due) and errors (any answer other than
the endpoint's success status, a connection reset, a socket closed or refused), and the memory
figures (the mean of the minute's samples). Targets: no error; the last minute's RSS of every
process and Redis memory within 10 % of the second minute's. Two PNGs (p99 per endpoint per
minute, memory over time) go to docs/benchmarks/ (beside `BENCH_REPORT` when it is set).

Trial sizes (the defaults are the issue's): `SOAK_SECONDS` (600), `SOAK_SCALE` (1: populations
and sockets), `SOAK_SEARCH_RATE` (20), `SOAK_BUCKET_SECONDS` (60, the "minute").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psycopg
import redis as redis_sync
import uvloop

from bench.accept_storm import SECRET, Deployment, wait_caught_up
from bench.common import (
    REPORT,
    ROOT,
    Figures,
    cpu_seconds,
    free_port,
    healthy,
    report_path,
    scratch_database,
    servers,
    service_env,
    wait_until,
    weelo,
)
from bench.fanout import raise_open_files, rss_bytes
from bench.soak_load import (
    Api,
    Fleet,
    Recorder,
    Seeded,
    Sizes,
    Workload,
    gateway_of,
    go_online,
    make_fleet,
    register,
)
from bench.soak_report import report

SERVICES = ("gateway", "broadcast", "acceptance", "timer", "presence", "fanout")
COPIES = 2
# PostgreSQL connections per process (its own dedicated ones and a pool), the fewest each
# service accepts plus one more for the gateway's pool: twelve processes on a server whose 100
# connections are shared hold at most 64.
DB_POOL_SIZE = {"gateway": 6, "fanout": 6}
DB_POOL_SIZE_ELSE = 5
SAMPLE_S = 10.0
MEMORY_TOLERANCE = 0.10
DRAIN_WITHIN_S = 600.0
MIB = 1024 * 1024
Proc = subprocess.Popen[bytes]


# --- the deployment ---------------------------------------------------------------------------


def _pings(url: str) -> bool:
    try:
        return bool(redis_sync.Redis.from_url(url).ping())
    except (redis_sync.RedisError, OSError):
        return False


@contextlib.contextmanager
def own_redis(directory: Path) -> Iterator[tuple[str, Proc]]:
    """A redis-server of the soak's own on a free port, configured as the machine's shared one
    (`save ""`, no AOF); its URL and process."""
    port = free_port()
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    command += ["--appendonly", "no", "--dir", str(directory), "--logfile", "redis.log"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        wait_until(lambda: _pings(url), 30, "the soak's redis-server")
        yield url, proc
    finally:
        _stop([proc])


def _up(proc: Proc, port: int) -> bool:
    """Whether the process answers its health check; raises when it has exited."""
    if proc.poll() is not None:
        raise RuntimeError(f"a service exited with {proc.returncode} before it was healthy")
    return healthy(port)


def _stop(procs: Sequence[Proc]) -> None:
    """SIGTERM each, then wait for each (SIGKILL after 30 s)."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@dataclass
class Cluster:
    deployment: Deployment  # accept_storm's: its procs are every service process
    gateways: list[int]
    redis: Proc


@contextlib.contextmanager
def cluster(state: Path) -> Iterator[Cluster]:
    """A scratch database and the soak's own Redis with `COPIES` of every service running,
    all healthy; gateways on ports of their own."""
    target, prefix = servers(), f"bench-soak-{uuid.uuid4().hex[:8]}:"
    with own_redis(state) as (redis_url, redis_proc), scratch_database(target.database_url) as url:
        env = service_env(
            url,
            redis_url,
            prefix,
            JWT_SECRET=SECRET,
            JWT_REFRESH_SECRET=SECRET + "-refresh",
            RATE_LIMIT_PER_MINUTE="1000000",
            WEELO_STATE_DIR=str(state),
        )
        procs: dict[str, Proc] = {}
        ports: dict[str, int] = {}
        try:
            for service in SERVICES:
                for copy in range(1, COPIES + 1):
                    name, port = f"{service}-{copy}", free_port()
                    key = "GATEWAY_PORT" if service == "gateway" else "HEALTH_PORT"
                    command = weelo("run", service)
                    procs[name] = subprocess.Popen(command, env={**env, key: str(port)}, cwd=ROOT)
                    ports[name] = port
            for name, port in ports.items():
                wait_until(lambda n=name, p=port: _up(procs[n], p), 90, f"{name} health")
            gateways = [p for n, p in ports.items() if n.startswith("gateway")]
            yield Cluster(
                Deployment(url, redis_url, prefix, gateways[0], procs), gateways, redis_proc
            )
        finally:
            _stop(list(procs.values()))


# --- samples ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    at: float  # seconds since the soak's start
    rss: dict[str, int]  # every service process, plus the load generator's processes
    cpu: dict[str, float]  # the same processes and Redis: CPU seconds used so far
    backends: dict[int, float]  # the scratch database's PostgreSQL backends: the same, by pid
    redis_used: int
    redis_rss: int
    database_bytes: int
    load: float


def take_sample(c: Cluster, t0: float, clients: Sequence[Proc]) -> Sample:
    d = c.deployment
    pids = {name: p.pid for name, p in d.procs.items()}
    pids["load generator"] = os.getpid()
    for i, client in enumerate(clients, 1):
        pids[f"socket clients {i}"] = client.pid
    rss = {name: _rss(pid) for name, pid in pids.items()}
    cpu = {name: cpu_seconds(pid) for name, pid in {**pids, "Redis": c.redis.pid}.items()}
    info: Any = redis_sync.Redis.from_url(d.redis_url).info("memory")
    with psycopg.connect(d.database_url) as conn:
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        found = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        ).fetchall()
    assert row is not None
    backends = {pid: cpu_seconds(pid) for (pid,) in found}
    return Sample(
        time.monotonic() - t0,
        rss,
        cpu,
        backends,
        int(info["used_memory"]),
        _rss(c.redis.pid),
        int(row[0]),
        os.getloadavg()[0],
    )


def _rss(pid: int) -> int:
    try:
        return rss_bytes(pid)
    except (OSError, RuntimeError):
        return 0


# --- the socket holders -----------------------------------------------------------------------


@dataclass
class SocketClients:
    """The socket-holder processes (`bench.soak_sockets`, one per gateway) and their reports."""

    procs: list[Proc] = field(default_factory=list)
    lines: list[list[dict[str, Any]]] = field(default_factory=list)
    opened_in: float = 0.0

    def start(self, ports: Sequence[int], fleet: Fleet, state: Path) -> None:
        began = time.monotonic()
        users = [("customer", u) for u in fleet.customers]
        users += [("transporter", u) for u in fleet.socket_transporters]
        users += [("driver", u) for u in fleet.socket_drivers()]
        for port in ports:
            spec = state / f"sockets-{port}.json"
            spec.write_text(json.dumps([u for u in users if gateway_of(u[1], ports) == port]))
            command = [sys.executable, "-m", "bench.soak_sockets"]
            command += [f"ws://127.0.0.1:{port}/v1/ws", str(spec)]
            self.procs.append(
                subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            )
        for proc in self.procs:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != b"ready":
                raise RuntimeError("a socket client did not get its sockets open")
        self.opened_in = time.monotonic() - began
        for proc in self.procs:
            seen: list[dict[str, Any]] = []
            self.lines.append(seen)
            assert proc.stdout is not None
            threading.Thread(target=_read_lines, args=(proc.stdout, seen), daemon=True).start()

    def stop(self) -> None:
        for proc in self.procs:
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
        _stop(self.procs)

    def between(self, start: float, end: float) -> tuple[int, int, int, int]:
        """(frames received, sockets closed, openings failed, sockets open at `end`) over
        [start, end) in epoch seconds, summed over the clients."""
        frames = closed = failed = opened = 0
        for seen in self.lines:
            first, last = _at(seen, start), _at(seen, end)
            frames += sum(last.get("frames", {}).values()) - sum(first.get("frames", {}).values())
            closed += last.get("closed", 0) - first.get("closed", 0)
            failed += last.get("failed", 0) - first.get("failed", 0)
            opened += last.get("open", 0)
        return frames, closed, failed, opened


def _read_lines(stream: IO[bytes], into: list[dict[str, Any]]) -> None:
    for raw in stream:
        with contextlib.suppress(ValueError):
            into.append(json.loads(raw))


def _at(lines: Sequence[dict[str, Any]], when: float) -> dict[str, Any]:
    """The last report at or before `when` (the first report when none is)."""
    before = [line for line in list(lines) if line["at"] <= when]
    return before[-1] if before else (lines[0] if lines else {})


# --- the run ----------------------------------------------------------------------------------


@dataclass
class Soak:
    sizes: Sizes
    recorder: Recorder
    workload: Workload
    t0_wall: float
    samples: list[Sample] = field(default_factory=list)
    seeded: Seeded = field(default_factory=Seeded)
    sockets: SocketClients = field(default_factory=SocketClients)
    online_at_end: int = 0
    drained_s: float | None = None  # the last event handled, after the last answer
    loads: tuple[float, float] = (0.0, 0.0)


async def _sampler(soak: Soak, c: Cluster) -> None:
    until = soak.recorder.t0 + soak.sizes.seconds
    step = min(SAMPLE_S, soak.sizes.bucket_s / 6)
    n = 0
    while True:
        due = soak.recorder.t0 + n * step
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        if due > until:
            return
        soak.samples.append(
            await asyncio.to_thread(take_sample, c, soak.recorder.t0, soak.sockets.procs)
        )
        n += 1


async def _prepare(c: Cluster, fleet: Fleet, soak: Soak, state: Path) -> None:
    api = Api(c.gateways)
    await register(api, fleet, soak.seeded)
    await asyncio.to_thread(wait_caught_up, c.deployment, "the registrations", DRAIN_WITHIN_S)
    await asyncio.to_thread(soak.sockets.start, c.gateways, fleet, state)
    await go_online(api, fleet, soak.seeded)
    await api.close()
    await asyncio.to_thread(wait_caught_up, c.deployment, "the drivers going online")


async def _soak(c: Cluster, sizes: Sizes, state: Path, sockets: SocketClients) -> Soak:
    rng = random.Random(15)
    fleet = make_fleet(sizes, rng)
    recorder = Recorder(0.0, sizes.bucket_s)
    api = Api(c.gateways, recorder)
    soak = Soak(sizes, recorder, Workload(api, fleet, sizes, rng), 0.0, sockets=sockets)
    await _prepare(c, fleet, soak, state)
    recorder.t0, soak.t0_wall = time.monotonic() + 1.0, time.time() + 1.0
    soak.loads = (os.getloadavg()[0], 0.0)
    await asyncio.gather(soak.workload.run(), _sampler(soak, c))
    last_answer = time.monotonic()
    soak.online_at_end = _online(c.deployment.database_url)
    await api.close()
    try:
        await asyncio.to_thread(wait_caught_up, c.deployment, "the soak's events", DRAIN_WITHIN_S)
        soak.drained_s = time.monotonic() - last_answer
    except TimeoutError:
        soak.drained_s = None
    soak.loads = (soak.loads[0], os.getloadavg()[0])
    return soak


def _online(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM drivers WHERE online").fetchone()
    return int(row[0]) if row else 0


def run() -> Figures:
    sizes = Sizes.from_env()
    figures = Figures("soak", _command(sizes))
    raise_open_files()
    sockets = SocketClients()
    with tempfile.TemporaryDirectory() as tmp, cluster(Path(tmp)) as c:
        try:
            soak = uvloop.run(_soak(c, sizes, Path(tmp), sockets))
        finally:
            sockets.stop()
    report(figures, soak, _png_dir())
    return figures


def _command(sizes: Sizes) -> str:
    names = {
        "SOAK_SECONDS": (sizes.seconds, Sizes().seconds),
        "SOAK_BUCKET_SECONDS": (sizes.bucket_s, Sizes().bucket_s),
        "SOAK_SEARCH_RATE": (sizes.search_rate, Sizes().search_rate),
    }
    given = [f"{k}={v:g}" for k, (v, default) in names.items() if v != default]
    if sizes.transporters != Sizes().transporters:
        given.append(f"SOAK_SCALE={os.environ.get('SOAK_SCALE')}")
    return " ".join([*given, "make bench SCENARIOS=soak"])


def _png_dir() -> Path:
    """docs/benchmarks/, or beside `BENCH_REPORT` when it is set (a trial's PNGs stay out of
    the docs)."""
    report = report_path()
    folder = report.parent / "benchmarks" if report == REPORT else report.parent
    folder.mkdir(parents=True, exist_ok=True)
    return folder
