"""`bus`: append → outbox relay → consumer group, end to end, as separate processes.

Producers append `BusProbe` events to PostgreSQL; the relay runs inside a real `weelo run
broadcast` process; a consumer process runs a `StreamRunner` and notes when each event reached its
handler. Latency is from the producer's commit returning to the handler being called (one clock:
one machine).

The throughput runs drive the bus as a load of many independent request handlers would: several
producer processes (`python -m bench.bus produce ...`), each with many connections, each
connection committing its own transactions (`BEGIN`, `append`, `COMMIT`) as fast as it can.
Each run reports the rate the producers committed (offered) and the rate the handler saw
(handled), and which of the two was the limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import redis as redis_sync
import uvloop

from bench.common import (
    ROOT,
    Figures,
    cpu_seconds,
    processes,
    scratch_database,
    servers,
    service_env,
    verdict,
    wait_until,
    weelo,
)
from libs.events.catalogue import BusProbe
from libs.events.store import append


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


STEADY_WRITERS = 8
STEADY_RATE = 500
STEADY_SECONDS = 10
PRODUCERS = _env_int("BUS_PRODUCERS", 2)  # producer processes in a throughput run
WRITERS = _env_int("BUS_WRITERS", 8)  # connections per producer process
BURST_EVENTS = _env_int("BUS_EVENTS", 30_000)
BURST_BASE = 1_000_000
BATCHED_BASE = 2_000_000
WARMUP = range(900_000, 900_100)  # not measured: lets the relay take the lead and connect
BATCH = 10
KEPT_PACE = 0.95  # handled at this share of the offered rate or more: the bus kept pace
TARGET = 3_000  # events/s commit to handler, one event per transaction (issue 15)


async def _writer(
    url: str, jobs: asyncio.Queue[tuple[list[int], float]], commits: dict[int, float]
) -> None:
    """One request handler's connection: each job is one transaction (`BEGIN`, the append,
    `COMMIT`), committed before the next job is taken. (Pipelined, `BEGIN` with the append, a
    trial run's producers spent 613 µs of CPU per transaction.)"""
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
    url: str,
    sequences: range,
    rate: float | None,
    per_transaction: int = 1,
    writers: int = STEADY_WRITERS,
    start: float | None = None,
) -> dict[int, float]:
    """Append one event per sequence, `per_transaction` to a transaction, from `writers`
    connections, at `rate` events a second (open loop) or as fast as possible, from `start`
    (time.time(); by default 0.2 s from now)."""
    jobs: asyncio.Queue[tuple[list[int], float]] = asyncio.Queue()
    begin = start if start is not None else time.time() + 0.2
    for i in range(0, len(sequences), per_transaction):
        batch = list(sequences[i : i + per_transaction])
        jobs.put_nowait((batch, begin + i / rate if rate else begin))
    for _ in range(writers):
        jobs.put_nowait(([], 0.0))
    commits: dict[int, float] = {}
    await asyncio.gather(*(_writer(url, jobs, commits) for _ in range(writers)))
    return commits


# --- CPU accounting ---------------------------------------------------------------------------


def _named_cpu_seconds(name: str) -> float:
    """CPU seconds of every live process whose command is `name` (postgres, redis-server)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == name:
                    total += cpu_seconds(int(entry.name))
    return total


def _machine_busy_seconds() -> float:
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


@dataclass
class Cpu:
    """CPU seconds of the relay's process, the consumer and Redis over one run, and the
    machine's busy time. The producers report their own; PostgreSQL's backends of a run come and
    go with the producers' connections, so PostgreSQL is the machine's busy time less the rest."""

    relay_pid: int
    consumer_pid: int
    start: dict[str, float]
    spent: dict[str, float]
    wall_s: float = 0.0

    @classmethod
    def begin(cls, relay_pid: int, consumer_pid: int) -> Cpu:
        cpu = cls(relay_pid, consumer_pid, {}, {})
        cpu.start = cpu._sample()
        return cpu

    def _sample(self) -> dict[str, float]:
        return {
            "relay process": cpu_seconds(self.relay_pid),
            "consumer": cpu_seconds(self.consumer_pid),
            "Redis": _named_cpu_seconds("redis-server"),
            "machine": _machine_busy_seconds(),
            "wall": time.monotonic(),
        }

    def end(self) -> None:
        now = self._sample()
        self.spent = {k: v - self.start[k] for k, v in now.items()}
        self.wall_s = self.spent.pop("wall")

    def per_event(self, events: int, producers_s: float) -> str:
        parts = {
            "producers": producers_s,
            **{k: v for k, v in self.spent.items() if k != "machine"},
        }
        machine = self.spent["machine"]
        rest = max(0.0, machine - sum(parts.values()))
        text = " · ".join(f"{k} {v * 1e6 / events:.0f}" for k, v in parts.items())
        return (
            f"{text} · PostgreSQL and the rest {rest * 1e6 / events:.0f} µs per event; the "
            f"machine was busy {machine / self.wall_s:.2f} of {os.cpu_count()} cores"
        )


# --- producer processes -----------------------------------------------------------------------


def _producer_main(args: Sequence[str]) -> None:
    """`python -m bench.bus produce URL FIRST COUNT PER_TRANSACTION WRITERS START OUTFILE`."""
    url, first, count, per, writers, start, out = args
    seqs = range(int(first), int(first) + int(count))
    commits = uvloop.run(produce(url, seqs, None, int(per), int(writers), float(start)))
    Path(out).write_text(json.dumps({"cpu_s": time.process_time(), "commits": commits}))


@dataclass(frozen=True)
class Produced:
    start: float
    commits: dict[int, float]
    cpu_s: float  # the producer processes' CPU seconds

    @property
    def offered(self) -> float:
        return len(self.commits) / (max(self.commits.values()) - self.start)


def produce_in_processes(url: str, sequences: range, per_transaction: int, tmp: Path) -> Produced:
    """Commit `sequences` from `PRODUCERS` processes of `WRITERS` connections each, all starting
    at the same instant, as fast as they can."""
    start = time.time() + 3.0  # every process started, connected and waiting by then
    share = -(-len(sequences) // PRODUCERS)
    share -= share % per_transaction
    commands, outs = [], []
    for first in range(sequences.start, sequences.stop, share):
        count = min(share, sequences.stop - first)
        out = tmp / f"producer-{first}.json"
        outs.append(out)
        commands.append(
            [
                sys.executable,
                "-m",
                "bench.bus",
                "produce",
                url,
                str(first),
                str(count),
                str(per_transaction),
                str(WRITERS),
                str(start),
                str(out),
            ]
        )
    procs = [subprocess.Popen(c, cwd=ROOT) for c in commands]
    for p in procs:
        if p.wait(300) != 0:
            raise RuntimeError(f"a producer failed ({p.returncode})")
    commits: dict[int, float] = {}
    cpu_s = 0.0
    for out in outs:
        data = json.loads(out.read_text())
        commits.update({int(k): v for k, v in data["commits"].items()})
        cpu_s += data["cpu_s"]
    return Produced(start, commits, cpu_s)


# --- the scenario -----------------------------------------------------------------------------


def run() -> Figures:
    target = servers()
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    steady = range(STEADY_RATE * STEADY_SECONDS)
    burst = range(BURST_BASE, BURST_BASE + BURST_EVENTS)
    batched = range(BATCHED_BASE, BATCHED_BASE + BURST_EVENTS)
    total = len(WARMUP) + len(steady) + len(burst) + len(batched)
    figures = Figures("bus", "make bench SCENARIOS=bus")
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
        runs: list[tuple[int, Produced, Cpu, float]] = []
        with processes([weelo("run", "broadcast"), consumer], env) as procs:
            wait_until(lambda: client.exists(prefix + "bench:consumer-ready"), 30, "consumer")
            uvloop.run(produce(url, WARMUP, 100))
            steady_load = os.getloadavg()[0]
            steady_commits = uvloop.run(produce(url, steady, STEADY_RATE))
            for sequences, per in ((burst, 1), (batched, BATCH)):
                _wait_handled(client, prefix, procs[1])
                load = os.getloadavg()[0]
                cpu = Cpu.begin(procs[0].pid, procs[1].pid)
                produced = produce_in_processes(url, sequences, per, Path(tmp))
                _wait_handled(client, prefix, procs[1], every=len(produced.commits))
                cpu.end()
                runs.append((per, produced, cpu, load))
            procs[1].wait(120)
        arrivals = {int(k): v for k, v in json.loads(out.read_text()).items()}
        client.delete(*client.keys(prefix + "*"))
    figures.latency(
        f"commit → handler at {STEADY_RATE} events/s offered (open loop, {STEADY_SECONDS} s, "
        f"load average {steady_load:.2f} at its start)",
        [arrivals[s] - t for s, t in steady_commits.items()],
    )
    for per, produced, cpu, load in runs:
        _throughput(figures, produced, arrivals, per, cpu, load)
    figures.notes.append(
        "The relay runs inside a real `weelo run broadcast` process; the consumer "
        "is a separate process running the same `StreamRunner` every service "
        f"uses; the producers are {PRODUCERS} more processes of {WRITERS} connections each, "
        "each connection committing its own transactions (`BEGIN`, the append, `COMMIT`) as "
        "fast as it can. All share the machine's 2 cores with "
        "PostgreSQL and Redis, so a producer that commits faster leaves less CPU to the bus. "
        "Offered: the rate the producers committed; handled: the rate the handler saw them, "
        "from the producers' start to the last event handled. When handled keeps within "
        f"{1 - KEPT_PACE:.0%} of offered the producers were the limit, not the bus."
    )
    return figures


def _wait_handled(
    client: redis_sync.Redis, prefix: str, consumer: subprocess.Popen[bytes], every: int = 0
) -> None:
    """Wait until the consumer's group has nothing left to read or acknowledge (a run's events
    all handled), so that the next run starts on an idle bus and this one's CPU is all counted."""
    stream = prefix + "{bus}:events:probe"

    def idle() -> bool:
        if consumer.poll() is not None:
            return True
        groups: Any = client.xinfo_groups(stream)
        return all(int(g["pending"]) == 0 and int(g.get("lag") or 0) == 0 for g in groups)

    wait_until(idle, 120 + every / 500, "the consumer to catch up")


def _throughput(
    figures: Figures,
    produced: Produced,
    arrivals: dict[int, float],
    per_transaction: int,
    cpu: Cpu,
    load: float,
) -> None:
    """The rate the producers committed, the rate events reached the handler, and whose limit
    that is: the producers' when the bus kept pace with their commits, else the bus's."""
    commits, start = produced.commits, produced.start
    label = f"{per_transaction} event{'s' if per_transaction > 1 else ''} per transaction"
    handled_by = max(arrivals[s] for s in commits)
    last_commit = max(commits.values())
    offered = produced.offered
    handled = len(commits) / (handled_by - start)
    whose = (
        "the bus kept pace: the producers are the limit, not the bus"
        if handled >= KEPT_PACE * offered
        else "the bus fell behind the producers: this is the bus's limit"
    )
    target = (
        f"; target ≥ {TARGET:,} events/s: {verdict(handled >= TARGET)}"
        if per_transaction == 1
        else ""
    )
    figures.add(
        f"commit → handler, {label}, {PRODUCERS} producer processes of {WRITERS} connections each "
        "committing as fast as they can",
        f"offered {offered:,.0f} events/s, handled {handled:,.0f} events/s "
        f"({len(commits):,} events; the last handled {(handled_by - last_commit) * 1000:,.0f} ms "
        f"after the last commit; {whose}){target}; load average {load:.2f} at its start",
    )
    figures.latency(
        f"commit → handler during that run ({label})", [arrivals[s] - t for s, t in commits.items()]
    )
    figures.add(
        f"CPU per event during that run ({label}; from the producers' start to the consumer "
        "caught up)",
        cpu.per_event(len(commits), produced.cpu_s),
    )


if __name__ == "__main__" and sys.argv[1:2] == ["produce"]:
    _producer_main(sys.argv[2:])
