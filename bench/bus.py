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

from bench.common import (
    Figures,
    processes,
    scratch_database,
    servers,
    service_env,
    wait_until,
    weelo,
)
from libs.events.catalogue import BusProbe
from libs.events.store import append

WRITERS = 8
STEADY_RATE = 500
STEADY_SECONDS = 10
BURST_EVENTS = 30_000
BURST_BASE = 1_000_000
BATCHED_BASE = 2_000_000
WARMUP = range(900_000, 900_100)  # not measured: lets the relay take the lead and connect
BATCH = 10
KEPT_PACE = 0.95  # handled at this share of the producer's commit rate or more: the bus kept pace


async def _writer(
    url: str, jobs: asyncio.Queue[tuple[list[int], float]], commits: dict[int, float]
) -> None:
    stream, version = f"probe-{uuid.uuid4()}", 0
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        while True:
            sequences, due = await jobs.get()
            if not sequences:
                return
            if (delay := due - time.time()) > 0:
                await asyncio.sleep(delay)
            async with conn.transaction():
                await append(conn, stream, version, [BusProbe(sequence=s) for s in sequences])
            version += len(sequences)
            commits.update(dict.fromkeys(sequences, time.time()))


async def produce(
    url: str, sequences: range, rate: float | None, per_transaction: int = 1
) -> dict[int, float]:
    """Append one event per sequence, `per_transaction` to a transaction, at `rate` events a
    second (open loop) or as fast as possible."""
    jobs: asyncio.Queue[tuple[list[int], float]] = asyncio.Queue()
    start = time.time() + 0.2
    for i in range(0, len(sequences), per_transaction):
        batch = list(sequences[i : i + per_transaction])
        jobs.put_nowait((batch, start + i / rate if rate else 0.0))
    for _ in range(WRITERS):
        jobs.put_nowait(([], 0.0))
    commits: dict[int, float] = {}
    await asyncio.gather(*(_writer(url, jobs, commits) for _ in range(WRITERS)))
    return commits


def run() -> Figures:
    target = servers()
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    steady = range(STEADY_RATE * STEADY_SECONDS)
    burst = range(BURST_BASE, BURST_BASE + BURST_EVENTS)
    batched = range(BATCHED_BASE, BATCHED_BASE + BURST_EVENTS)
    total = len(WARMUP) + len(steady) + len(burst) + len(batched)
    with scratch_database(target.database_url) as url, tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "arrivals.json"
        env = service_env(url, target.redis_url, prefix, HEALTH_PORT="0")
        consumer = [
            sys.executable,
            "-m",
            "bench.bus_consumer",
            target.redis_url,
            prefix,
            str(total),
            str(out),
        ]
        client = redis_sync.Redis.from_url(target.redis_url)
        with processes([weelo("run", "broadcast"), consumer], env) as procs:
            wait_until(lambda: client.exists(prefix + "bench:consumer-ready"), 30, "consumer")
            uvloop.run(produce(url, WARMUP, 100))
            steady_commits = uvloop.run(produce(url, steady, STEADY_RATE))
            runs = [_timed(url, burst, 1), _timed(url, batched, BATCH)]
            procs[1].wait(120)
        arrivals = {int(k): v for k, v in json.loads(out.read_text()).items()}
        client.delete(*client.keys(prefix + "*"))
    figures = Figures("bus", "make bench SCENARIOS=bus")
    figures.latency(
        f"commit → handler at {STEADY_RATE} events/s offered (open loop, {STEADY_SECONDS} s)",
        [arrivals[s] - t for s, t in steady_commits.items()],
    )
    for (start, commits), per in zip(runs, (1, BATCH), strict=True):
        _throughput(figures, start, commits, arrivals, per)
    figures.notes.append(
        "The relay runs inside a real `weelo run broadcast` process; the consumer "
        "is a separate process running the same `StreamRunner` every service "
        "uses; the producer is a third process. All share the machine with "
        "PostgreSQL and Redis. The throughput rows drive the bus only as fast as "
        f"{WRITERS} writers commit: when the handler keeps pace with them the figure is "
        "the producer's limit, not the bus's."
    )
    return figures


def _timed(url: str, sequences: range, per_transaction: int) -> tuple[float, dict[int, float]]:
    start = time.time()
    return start, uvloop.run(produce(url, sequences, None, per_transaction))


def _throughput(
    figures: Figures,
    start: float,
    commits: dict[int, float],
    arrivals: dict[int, float],
    per_transaction: int,
) -> None:
    """The rate events reached the handler while the writers committed as fast as they could,
    and whose limit that rate is: the producer's when the bus kept pace with its commits."""
    label = f"{per_transaction} event{'s' if per_transaction > 1 else ''} per transaction"
    handled_by = max(arrivals[s] for s in commits)
    produced = len(commits) / (max(commits.values()) - start)
    handled = len(commits) / (handled_by - start)
    whose = (
        "the bus kept pace: this is the producer's limit, not the bus's, whose own is not measured"
        if handled >= KEPT_PACE * produced
        else "the bus fell behind the producer: this is the bus's limit"
    )
    figures.add(
        f"commit → handler with {WRITERS} writers committing as fast as they can, {label}",
        f"{handled:,.0f} events/s handled ({len(commits):,} events; the producer committed "
        f"{produced:,.0f} events/s; {whose})",
    )
    figures.latency(
        f"commit → handler during that run ({label})", [arrivals[s] - t for s, t in commits.items()]
    )
