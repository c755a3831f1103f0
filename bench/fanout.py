"""`fanout`: 5,000 idle WebSockets on one gateway process, then 1,000 messages/s to them.

One real `weelo run gateway` on a scratch database: it also runs the outbox relay and the
projector, so every message takes the production path: a `DriverAvailabilityChanged` committed
to PostgreSQL → outbox relay → projector → the transporter's inbox (Lua) → pub/sub → socket.
The events are appended straight to the event store (as the presence service would), one
transaction each from several connections, at fixed times (open loop); each goes to one of the
5,000 connected transporters in turn. Two client processes hold 2,500 sockets each (opened
evenly over 20 s, so keepalive pings are spread as with real clients) and note when each frame
arrived; latency is that time minus the producer's commit (one machine, one clock). The inbox
entry id (Redis time) splits it into commit → inbox (relay and projector) and inbox → socket.

Memory per idle connection = (gateway RSS with every socket open - RSS before) / sockets.
Usage of the client part: `python -m bench.fanout client WS_URL FIRST COUNT EXPECTED OUTFILE`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import redis as redis_sync
import uvloop
from websockets.asyncio.client import ClientConnection, connect

from bench.common import (
    ROOT,
    Figures,
    free_port,
    healthy,
    percentile,
    scratch_database,
    servers,
    service_env,
    wait_until,
    weelo,
)
from libs.events.catalogue import DriverAvailabilityChanged
from libs.events.store import append
from libs.runtime.tokens import issue

SOCKETS = 5_000
CLIENTS = 2
RATE = 1_000
SECONDS = 10
WRITERS = 8
OPENING = 100  # sockets a client opens at once
# Sockets are opened evenly over one keepalive interval (uvicorn and the client each ping every
# 20 s), so pings are spread as they are when real clients come and go, not bunched together.
SPREAD_S = 20.0
SECRET = "bench-fanout-access-secret-" + "x" * 40
Client = subprocess.Popen[bytes]


@dataclass(frozen=True)
class Deployment:
    database_url: str
    redis_url: str
    prefix: str
    port: int
    procs: dict[str, subprocess.Popen[bytes]]

    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"


@contextlib.contextmanager
def deployment(services: Sequence[str] = (), **extra: str) -> Iterator[Deployment]:
    """A scratch database and key prefix with a gateway (and `services`) running, healthy."""
    target, prefix = servers(), f"bench-{uuid.uuid4().hex[:8]}:"
    with scratch_database(target.database_url) as url, tempfile.TemporaryDirectory() as state:
        env = service_env(
            url,
            target.redis_url,
            prefix,
            JWT_SECRET=SECRET,
            JWT_REFRESH_SECRET=SECRET + "-refresh",
            RATE_LIMIT_PER_MINUTE="1000000",
            WEELO_STATE_DIR=state,
            **extra,
        )
        ports = {name: free_port() for name in ("gateway", *services)}
        procs: dict[str, subprocess.Popen[bytes]] = {}
        try:
            for name, port in ports.items():
                key = "GATEWAY_PORT" if name == "gateway" else "HEALTH_PORT"
                procs[name] = subprocess.Popen(
                    weelo("run", name), env={**env, key: str(port)}, cwd=ROOT
                )
            for name, port in ports.items():
                wait_until(lambda p=port: healthy(p), 60, f"{name} health")  # type: ignore[misc]
            yield Deployment(url, target.redis_url, prefix, ports["gateway"], procs)
        finally:
            for proc in procs.values():
                proc.terminate()
            for proc in procs.values():
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            client = redis_sync.Redis.from_url(target.redis_url)
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            for start in range(0, len(keys), 1000):
                client.delete(*keys[start : start + 1000])


def raise_open_files(wanted: int = 20_000) -> None:
    """Let this process (and the gateway it starts) hold thousands of sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def transporter(index: int) -> str:
    return f"bt-{index}"


# ---- client processes -------------------------------------------------------------------


@dataclass
class Arrivals:
    expected: int
    opened: int = 0
    # driver id -> (when the frame arrived, when its inbox entry was written: the eventId's ms)
    at: dict[str, tuple[float, float]] = field(default_factory=dict)
    complete: asyncio.Event = field(default_factory=asyncio.Event)

    def note(self, frame: dict[str, Any]) -> None:
        entry_ms = int(frame["eventId"].partition("-")[0])
        self.at[frame["data"]["driverId"]] = (time.time(), entry_ms / 1000)
        if len(self.at) >= self.expected:
            self.complete.set()


async def _hold(url: str, sub: str, gate: asyncio.Semaphore, seen: Arrivals, delay: float) -> None:
    token = issue(SECRET, role="transporter", sub=sub, ttl_s=3600)
    await asyncio.sleep(delay)
    async with gate:
        ws: ClientConnection = await connect(
            url,
            additional_headers={"Authorization": f"Bearer {token}"},
            compression=None,
            open_timeout=120,
        )
    seen.opened += 1
    async for raw in ws:
        seen.note(json.loads(raw))


async def client_main(
    url: str, first: int, count: int, expected: int
) -> dict[str, tuple[float, float]]:
    """Open `count` sockets, print `ready`, note arrivals until `expected` came (or 2 min)."""
    seen, gate = Arrivals(expected), asyncio.Semaphore(OPENING)
    subs = [transporter(i) for i in range(first, first + count)]
    holders = [
        asyncio.create_task(_hold(url, sub, gate, seen, SPREAD_S * i / count))
        for i, sub in enumerate(subs)
    ]
    while seen.opened < count:
        failed = [h for h in holders if h.done() and h.exception() is not None]
        if failed:
            raise RuntimeError("a socket failed to open") from failed[0].exception()
        await asyncio.sleep(0.1)
    print("ready", flush=True)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(seen.complete.wait(), 120)
    return seen.at


def start_client(d: Deployment, first: int, count: int, expected: int, out: Path) -> Client:
    args = [d.ws_url(), str(first), str(count), str(expected), str(out)]
    command = [sys.executable, "-m", "bench.fanout", "client", *args]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE)


# ---- producer ---------------------------------------------------------------------------


async def _writer(
    url: str, jobs: asyncio.Queue[tuple[int, float]], commits: dict[int, float]
) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        while (job := await jobs.get())[0] >= 0:
            sequence, due = job
            if (delay := due - time.time()) > 0:
                await asyncio.sleep(delay)
            event = DriverAvailabilityChanged(
                driver_id=f"bd{sequence}",
                transporter_id=transporter(sequence % SOCKETS),
                online=True,
            )
            async with conn.transaction():
                await append(conn, f"driver-bd{sequence}", 0, [event])
            commits[sequence] = time.time()


async def produce(url: str, count: int, rate: float) -> dict[int, float]:
    """`count` availability changes, one transaction each, offered at `rate` per second."""
    jobs: asyncio.Queue[tuple[int, float]] = asyncio.Queue()
    start = time.time() + 0.2
    for sequence in range(count):
        jobs.put_nowait((sequence, start + sequence / rate))
    for _ in range(WRITERS):
        jobs.put_nowait((-1, 0.0))
    commits: dict[int, float] = {}
    await asyncio.gather(*(_writer(url, jobs, commits) for _ in range(WRITERS)))
    return commits


# ---- the scenario -----------------------------------------------------------------------


def _expected(first: int, count: int, total: int) -> int:
    return sum(1 for s in range(total) if first <= s % SOCKETS < first + count)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loop_lag(port: int) -> dict[str, float]:
    """The gateway's `weelo_gateway_loop_lag_seconds` buckets (cumulative counts by `le`)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    found = re.findall(r'^weelo_gateway_loop_lag_seconds_bucket\{le="([^"]+)"\} (\S+)$', text, re.M)
    return {le: float(n) for le, n in found}


@dataclass
class Measured:
    commits: dict[int, float]
    arrivals: dict[int, tuple[float, float]]
    rss: tuple[int, int]
    cpu_s: float
    opened_in: float
    lag: tuple[dict[str, float], dict[str, float]]


def load_note(before: float) -> str:
    """How busy the machine was: other work on it shows in every figure here."""
    return (
        f"Load average (1 min) {before:.1f} before the run and {os.getloadavg()[0]:.1f} after it, "
        f"on {os.cpu_count()} cores; above about {os.cpu_count()} other work (other engineers' "
        "tests and benchmarks share this machine) competes for the cores and the figures are "
        "noisy: compare runs, not single numbers."
    )


def run() -> Figures:
    raise_open_files()
    figures, load = Figures("fanout", "make bench SCENARIOS=fanout"), os.getloadavg()[0]
    with deployment() as d, tempfile.TemporaryDirectory() as tmp:
        measured = _measure(d, Path(tmp))
    _report(figures, measured)
    figures.notes.append(load_note(load))
    return figures


def _measure(d: Deployment, tmp: Path) -> Measured:
    total, pid, share = RATE * SECONDS, d.procs["gateway"].pid, SOCKETS // CLIENTS
    uvloop.run(_warm_up(d))
    before = rss_bytes(pid)
    outs = [tmp / f"client-{k}.json" for k in range(CLIENTS)]
    opening = time.monotonic()
    clients = [
        start_client(d, k * share, share, _expected(k * share, share, total), outs[k])
        for k in range(CLIENTS)
    ]
    for c in clients:
        assert c.stdout is not None and c.stdout.readline().strip() == b"ready"
    opened_in = time.monotonic() - opening
    time.sleep(3.0)  # let the gateway settle with every socket idle
    after, cpu, lag = rss_bytes(pid), cpu_seconds(pid), loop_lag(d.port)
    commits = uvloop.run(produce(d.database_url, total, RATE))
    for c in clients:
        c.wait(180)
    cpu, lag_after = cpu_seconds(pid) - cpu, loop_lag(d.port)
    arrivals = {
        int(k[2:]): (v[0], v[1]) for out in outs for k, v in json.loads(out.read_text()).items()
    }
    return Measured(commits, arrivals, (before, after), cpu, opened_in, (lag, lag_after))


async def _warm_up(d: Deployment) -> None:
    """Open and close a few sockets so one-off allocations are not counted per connection."""
    for i in range(50):
        token = issue(SECRET, role="transporter", sub=f"warm-{i}", ttl_s=600)
        ws = await connect(d.ws_url(), additional_headers={"Authorization": f"Bearer {token}"})
        await ws.close()


def _report(figures: Figures, m: Measured) -> None:
    got = [(s, t, m.arrivals[s]) for s, t in m.commits.items() if s in m.arrivals]
    offered = f"{RATE:,} messages/s offered for {SECONDS} s to {SOCKETS:,} connected sockets"
    figures.latency(f"commit → frame received, {offered}", [a - t for _, t, (a, _) in got])
    figures.latency("… of which commit → written to the inbox", [i - t for _, t, (_, i) in got])
    figures.latency("… of which inbox → frame received", [a - i for _, _, (a, i) in got])
    figures.add("messages not received", f"{len(m.commits) - len(got)} of {len(m.commits):,}")
    committed = len(m.commits) / (max(m.commits.values()) - min(m.commits.values()))
    figures.add("producer's commit rate", f"{committed:,.0f} messages/s")
    figures.add(
        "gateway CPU per message (relay, projector, hub, socket)",
        f"{m.cpu_s / len(m.commits) * 1e6:.0f} µs ({m.cpu_s:.1f} CPU s for {len(m.commits):,})",
    )
    before, after = m.rss
    figures.add(
        "memory per idle connection",
        f"{(after - before) / SOCKETS / 1024:.1f} KiB (gateway RSS {before / 2**20:.0f} MiB → "
        f"{after / 2**20:.0f} MiB with {SOCKETS:,} sockets)",
    )
    figures.add(
        f"time to open {SOCKETS:,} sockets",
        f"{m.opened_in:.1f} s ({CLIENTS} clients, spread over {SPREAD_S:.0f} s on purpose)",
    )
    _lag_rows(figures, m)
    _worst_seconds(figures, got)
    figures.notes.append(
        "The gateway process also runs the outbox relay and the projector; PostgreSQL, Redis, "
        "the producer and both client processes share the machine's two cores with it. Clients "
        "do not negotiate permessage-deflate. The split uses the inbox entry's id (Redis time, "
        "ms) as the moment the projector wrote the message."
    )
    figures.notes.append(
        "Reading the figures: most seconds of a run have a p99 under 25 ms; the run's p99 comes "
        "from a stall of the gateway process of a few hundred ms that recurs about every 11 s "
        "once the 5,000 sockets are open (the per-second row), after which the relay's and the "
        "projector's backlog drains. It grows with the number of sockets: with 500 sockets the "
        "same run has a p99 of about 20 ms. Ruled out while investigating: Redis (no slow "
        "command; PINGs every 10 ms never over 50 ms), PostgreSQL and the WAL disk (SELECT 1, a "
        "write with NOTIFY and an fdatasync probe every 10 ms, none over 50 ms), the stream "
        "trimmer, keepalive pings (off on either side, the stall stays) and garbage-collection "
        "thresholds or gc.freeze() (the stall stays, although a full collection with 5,000 "
        "sockets, ~700,000 tracked objects, takes 0.1-0.4 s). The gateway's own /health answers "
        "0.2-0.4 s late during a stall. Memory per connection is measured with clients that do "
        "not negotiate permessage-deflate; with it (browsers do) uvicorn keeps zlib contexts "
        "per socket: about 54 KiB each."
    )


def _lag_rows(figures: Figures, m: Measured) -> None:
    before, after = m.lag
    late = {le: after.get(le, 0) - before.get(le, 0) for le in after}
    total = late.get("+Inf", 0)
    over = ", ".join(
        f"> {float(le) * 1000:.0f} ms: {total - late[le]:.0f}" for le in ("0.025", "0.1", "0.5")
    )
    figures.add(
        "gateway event loop: 100 ms timers firing late, during the run", f"{over} (of {total:.0f})"
    )


def _worst_seconds(figures: Figures, got: list[tuple[int, float, tuple[float, float]]]) -> None:
    """p99 of each second of the run: a stall shows as one bad second, saturation as a ramp."""
    start = min(t for _, t, _ in got)
    by_second: dict[int, list[float]] = {}
    for _, t, (a, _) in got:
        by_second.setdefault(int(t - start), []).append(a - t)
    p99 = [percentile(v, 99) * 1000 for _, v in sorted(by_second.items())]
    figures.add("p99 of each second of the run", " · ".join(f"{v:.0f}" for v in p99) + " ms")


if __name__ == "__main__":
    if sys.argv[1:2] == ["client"]:
        url, first, count, expected, out = sys.argv[2:7]
        got = uvloop.run(client_main(url, int(first), int(count), int(expected)))
        Path(out).write_text(json.dumps(got))
