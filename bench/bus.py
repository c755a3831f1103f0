"""`bus`: append → outbox relay → consumer group, end to end, as separate processes.

A producer appends `BusProbe` events to PostgreSQL (one transaction per event, from several
connections); the relay runs inside a real `weelo run broadcast` process; a consumer process
runs a `StreamRunner` and notes when each event reached its handler. Latency is from the
producer's commit returning to the handler being called (one clock: one machine).
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
import redis as redis_sync
import uvloop

from bench.common import Figures, processes, scratch_database, servers, service_env, wait_until, weelo
from libs.events.catalogue import BusProbe
from libs.events.store import append

WRITERS = 8
STEADY_RATE = 500
STEADY_SECONDS = 10
BURST_EVENTS = 30_000
BURST_BASE = 1_000_000


async def _writer(url: str, jobs: asyncio.Queue[tuple[int, float]], commits: dict[int, float]) -> None:
    stream, version = f"probe-{uuid.uuid4()}", 0
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        while True:
            sequence, due = await jobs.get()
            if sequence < 0:
                return
            if (delay := due - time.time()) > 0:
                await asyncio.sleep(delay)
            async with conn.transaction():
                await append(conn, stream, version, [BusProbe(sequence=sequence)])
            version += 1
            commits[sequence] = time.time()


async def produce(url: str, sequences: range, rate: float | None) -> dict[int, float]:
    """Append one event per sequence, at `rate` a second (open loop) or as fast as possible."""
    jobs: asyncio.Queue[tuple[int, float]] = asyncio.Queue()
    start = time.time() + 0.2
    for i, sequence in enumerate(sequences):
        jobs.put_nowait((sequence, start + i / rate if rate else 0.0))
    for _ in range(WRITERS):
        jobs.put_nowait((-1, 0.0))
    commits: dict[int, float] = {}
    await asyncio.gather(*(_writer(url, jobs, commits) for _ in range(WRITERS)))
    return commits


def run() -> Figures:
    target = servers()
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    steady = range(STEADY_RATE * STEADY_SECONDS)
    burst = range(BURST_BASE, BURST_BASE + BURST_EVENTS)
    with scratch_database(target.database_url) as url, tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "arrivals.json"
        env = service_env(url, target.redis_url, prefix, HEALTH_PORT="0")
        consumer = [sys.executable, "-m", "bench.bus_consumer", target.redis_url, prefix,
                    str(len(steady) + len(burst)), str(out)]
        client = redis_sync.Redis.from_url(target.redis_url)
        with processes([weelo("run", "broadcast"), consumer], env) as procs:
            wait_until(lambda: client.exists(prefix + "bench:consumer-ready"), 30, "consumer")
            steady_commits = uvloop.run(produce(url, steady, STEADY_RATE))
            burst_start = time.time()
            burst_commits = uvloop.run(produce(url, burst, None))
            procs[1].wait(120)
        arrivals = {int(k): v for k, v in json.loads(out.read_text()).items()}
        client.delete(*client.keys(prefix + "*"))
    return _figures(steady_commits, burst_commits, burst_start, arrivals)


def _figures(steady: dict[int, float], burst: dict[int, float], burst_start: float,
             arrivals: dict[int, float]) -> Figures:
    figures = Figures("bus", "make bench SCENARIOS=bus")
    figures.latency(f"commit → handler at {STEADY_RATE} events/s offered (open loop, "
                    f"{STEADY_SECONDS} s)", [arrivals[s] - t for s, t in steady.items()])
    produced = len(burst) / (max(burst.values()) - burst_start)
    handled_by = max(arrivals[s] for s in burst)
    figures.add("sustained throughput, produce → handle", f"{len(burst) / (handled_by - burst_start):,.0f} events/s "
                f"({len(burst):,} events, {WRITERS} writers, one transaction each)")
    figures.add("producer commit rate during that run", f"{produced:,.0f} events/s")
    figures.latency("commit → handler during the throughput run", [arrivals[s] - t for s, t in burst.items()])
    figures.notes.append("The relay runs inside a real `weelo run broadcast` process; the consumer is a "
                         "separate process running the same `StreamRunner` every service uses.")
    return figures
