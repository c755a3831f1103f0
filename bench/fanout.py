"""`fanout`: 5,000 idle WebSockets on one gateway process, then 1,000 messages/s to them.

One real `weelo run gateway` and one `weelo run fanout` (the projector; either may hold the
outbox relay's lease) on a scratch database, so every message takes the production path: a
`DriverAvailabilityChanged` committed to PostgreSQL → outbox relay → projector → the
transporter's inbox (Lua) → pub/sub → socket.
The events are written straight to the event store (the rows `append` writes, as the presence
service would), one transaction each, at fixed times (open loop), by a procedure inside
PostgreSQL on several connections; each goes to one of the 5,000 connected transporters in turn.
Two client processes hold 2,500 sockets each (opened evenly over 20 s, so keepalive pings are
spread as with real clients) and note when each frame arrived; latency is that time minus the
producer's commit (one machine, one clock). Entry ids (Redis time) split it into commit → on
the stream (relay), stream → inbox (projector) and inbox → socket.

Memory per idle connection = (gateway RSS with every socket open - RSS before) / sockets.
Usage of the client part: `python -m bench.fanout client WS_URL FIRST COUNT EXPECTED OUTFILE`
(it prints `ready`, then `done` once OUTFILE is written, and exits when its stdin closes).

Full garbage collections (`libs/runtime/heap.py`): production's policy runs one only when the
permanent generation has grown (twice its size after the last one, and a million objects more),
never by the clock, so the rows count those during the opening and the message phase of each
process (`weelo_full_collection_seconds`), and one is forced (SIGUSR1) in the gateway with every
socket open, before the message phase: its pause and what it found are their own row.
`BENCH_FANOUT_FULL_GC_S` (trials) gives the deployment a clock period as well
(`HEAP_FULL_EVERY_S`) and times the message phase to span the gateway's first periodic one, while
the side parts run in the wait; no collection is forced then.

Peers, in the same run on the same machine, with the same client processes (bench/peers/
ws_client.py), sockets, rate and message size: python-socketio with `AsyncRedisManager` under
uvicorn (bench/peers/socketio_*.py) and a bare `websockets` server reading Redis pub/sub, the
floor (bench/peers/ws_*.py); their latency is arrival minus the send time in the message.
For every system: memory per idle socket with clients that do not offer permessage-deflate and
with clients that offer it (whether the server negotiated it is counted), and the messages lost
when a Redis of the benchmark's own (never the shared one) is stopped for 3 s and started again
on its port with every socket connected and messages flowing.

Trial sizes (the defaults are the issue's): `BENCH_FANOUT_SOCKETS`, `BENCH_FANOUT_SECONDS`,
`BENCH_FANOUT_SPREAD_S`, `BENCH_FANOUT_RESTART_SECONDS`, `BENCH_FANOUT_FULL_GC_S`, and
`BENCH_FANOUT_PARTS` (a comma-separated subset of `main,latency,memory,restart`), and
`BENCH_FANOUT_MAIN_DEFLATE=1` (the main part's clients offer permessage-deflate).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import psycopg
import redis as redis_sync
import uvloop
from websockets.asyncio.client import ClientConnection, connect

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
from libs.events.catalogue import DriverAvailabilityChanged
from libs.events.codec import ENVELOPE_FIELD, encode
from libs.events.store import OUTBOX_CHANNEL, event_type
from libs.events.streams import events_stream
from libs.runtime.heap import HeapConfig
from libs.runtime.tokens import issue

SOCKETS = int(os.environ.get("BENCH_FANOUT_SOCKETS", "5000"))
CLIENTS = 2
RATE = 1_000
SECONDS = int(os.environ.get("BENCH_FANOUT_SECONDS", "10"))
WRITERS = 8
OPENING = 100  # sockets a client opens at once
# Sockets are opened evenly over one keepalive interval (uvicorn and the client each ping every
# 20 s), so pings are spread as they are when real clients come and go, not bunched together.
SPREAD_S = float(os.environ.get("BENCH_FANOUT_SPREAD_S", "20"))
MEMORY_SPREAD_S = SPREAD_S / 2  # sockets for a memory figure only: nothing is timed on them
P99_TARGET_S = 0.010
MAX_TARGET_S = 0.050
MEMORY_TARGET_BYTES = 30 * 1024  # per idle socket, with permessage-deflate negotiated
# Trials only: the main part's clients offer permessage-deflate (its CPU per message with it).
MAIN_DEFLATE = os.environ.get("BENCH_FANOUT_MAIN_DEFLATE") == "1"
# The Redis restart: a steady rate to every socket, Redis stopped RESTART_AT_S into it for
# DOWN_S, then GRACE_S for every system to catch up before the clients report.
RESTART_RATE = 100
RESTART_SECONDS = int(os.environ.get("BENCH_FANOUT_RESTART_SECONDS", "30"))
RESTART_AT_S = RESTART_SECONDS / 3
DOWN_S = 3.0
GRACE_S = 15.0
# A peer message is padded to the size of our frame (measured: 167 bytes), so every system
# carries the same bytes; each system's mean frame size is in the figures.
FRAME_BYTES = 167
SIDE_DB_POOL = "6"  # PostgreSQL connections per process of a side deployment (shared server)
PEER_CHANNEL = "bench-fanout-floor"
SECRET = "bench-fanout-access-secret-" + "x" * 40
Client = subprocess.Popen[bytes]


@dataclass(frozen=True)
class Deployment:
    database_url: str
    redis_url: str
    prefix: str
    port: int
    procs: dict[str, subprocess.Popen[bytes]]
    ports: dict[str, int] = field(default_factory=dict)  # every process's (HEALTH_PORT)
    healthy_at: float = 0.0  # time.time() once every process answered its health check

    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"


def deployment(
    services: Sequence[str] = ("fanout",), **extra: str
) -> contextlib.AbstractContextManager[Deployment]:
    """A scratch database and key prefix with a gateway (and `services`) running, healthy."""
    return deployment_on(servers().redis_url, services, **extra)


@contextlib.contextmanager
def deployment_on(
    redis_url: str,
    services: Sequence[str] = ("fanout",),
    **extra: str,
) -> Iterator[Deployment]:
    """`deployment` on the Redis at `redis_url`."""
    target, prefix = servers(), f"bench-{uuid.uuid4().hex[:8]}:"
    with scratch_database(target.database_url) as url, tempfile.TemporaryDirectory() as state:
        env = service_env(
            url,
            redis_url,
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
                command = weelo("run", name)
                procs[name] = subprocess.Popen(command, env={**env, key: str(port)}, cwd=ROOT)
            for name, port in ports.items():
                _wait_healthy(name, procs[name], port)
            yield Deployment(url, redis_url, prefix, ports["gateway"], procs, ports, time.time())
        finally:
            _stop_all(procs.values())
            with contextlib.suppress(redis_sync.RedisError, OSError):
                _delete_prefix(redis_url, prefix)


def _wait_healthy(name: str, proc: subprocess.Popen[bytes], port: int) -> None:
    """Until the process answers its health check (60 s); raises at once if it exited."""

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}")
        return healthy(port)

    wait_until(up, 60, f"{name} health")


def _stop_all(procs: Iterable[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each, then wait for each (SIGKILL after 30 s)."""
    listed = list(procs)
    for proc in listed:
        proc.terminate()
    for proc in listed:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _delete_prefix(redis_url: str, prefix: str) -> None:
    client = redis_sync.Redis.from_url(redis_url)
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


async def client_main(url: str, first: int, count: int, expected: int, out: Path) -> None:
    """Open `count` sockets, print `ready`, note arrivals until `expected` came (or 2 min),
    write them to `out` and print `done`; keep every socket open until stdin closes, so a client
    that finished first does not load the gateway with thousands of closes while the other one
    is still measuring."""
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
    # A measuring client must neither steal the cores from the gateway nor note a frame late
    # because it was collecting garbage (with 2,500 sockets a collection here takes 50-300 ms):
    # it does not collect while it measures, which for one run costs a few MB at most.
    gc.freeze()
    gc.disable()
    print("ready", flush=True)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(seen.complete.wait(), 120)
    gc.enable()
    await asyncio.to_thread(out.write_text, json.dumps(seen.at))
    print("done", flush=True)
    await asyncio.to_thread(sys.stdin.read)


def start_client(d: Deployment, first: int, count: int, expected: int, out: Path) -> Client:
    args = [d.ws_url(), str(first), str(count), str(expected), str(out)]
    command = [sys.executable, "-m", "bench.fanout", "client", *args]
    return subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE)


# ---- producer ---------------------------------------------------------------------------


# Each event is its own transaction, committed at its due time by a procedure inside PostgreSQL:
# the rows are exactly those `libs.events.store.append` writes (events, outbox, NOTIFY), but the
# producer costs no Python CPU, which on 2 cores would be taken from the gateway being measured.
# Each commit's time (clock_timestamp() once COMMIT returned) goes to an unlogged table.
_PRODUCER = """
CREATE UNLOGGED TABLE bench_commits (seq integer PRIMARY KEY, at double precision NOT NULL);
CREATE PROCEDURE bench_produce(
    seqs integer[], streams text[], ids uuid[], kinds text[], data text[], start_at float8,
    rate float8
) LANGUAGE plpgsql AS $$
DECLARE
    position bigint;
    pending integer := -1;
    committed_at float8;
BEGIN
    FOR i IN 1 .. array_length(seqs, 1) LOOP
        PERFORM pg_sleep(greatest(0, start_at + seqs[i] / rate
                                     - extract(epoch FROM clock_timestamp())));
        IF pending >= 0 THEN
            INSERT INTO bench_commits VALUES (pending, committed_at);
        END IF;
        INSERT INTO events (stream_id, version, event_id, event_type, data)
        VALUES (streams[i], 1, ids[i], kinds[i], data[i]::jsonb)
        RETURNING events.position INTO position;
        INSERT INTO outbox (position) VALUES (position);
        PERFORM pg_notify(%(channel)s, '');
        COMMIT;
        committed_at := extract(epoch FROM clock_timestamp());
        pending := seqs[i];
    END LOOP;
    INSERT INTO bench_commits VALUES (pending, committed_at);
    COMMIT;
END $$;
"""


def _event(sequence: int) -> DriverAvailabilityChanged:
    return DriverAvailabilityChanged(
        driver_id=f"bd{sequence}", transporter_id=transporter(sequence % SOCKETS), online=True
    )


async def _writer(url: str, sequences: list[int], start_at: float, rate: float) -> None:
    events = [_event(s) for s in sequences]
    params = (
        sequences,
        [f"driver-bd{s}" for s in sequences],
        [str(uuid.uuid4()) for _ in sequences],
        [event_type(e) for e in events],
        [encode(e).decode() for e in events],
        start_at,
        rate,
    )
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("CALL bench_produce(%s, %s, %s, %s, %s, %s, %s)", params)


async def produce(
    url: str, count: int, rate: float, start_at: float | None = None
) -> dict[int, float]:
    """`count` availability changes, one transaction each, offered at `rate` per second from
    `start_at` (`time.time()`; 0.5 s from now by default)."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(_PRODUCER.replace("%(channel)s", f"'{OUTBOX_CHANNEL}'"))
    start_at = start_at or time.time() + 0.5
    shares = [list(range(k, count, WRITERS)) for k in range(WRITERS)]
    await asyncio.gather(*(_writer(url, share, start_at, rate) for share in shares))
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute("SELECT seq, at FROM bench_commits")
        return {seq: at for seq, at in await cur.fetchall()}


# ---- the scenario -----------------------------------------------------------------------


def _expected(first: int, count: int, total: int) -> int:
    return sum(1 for s in range(total) if first <= s % SOCKETS < first + count)


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
    published: dict[int, float]
    rss: tuple[int, int]
    cpu_s: float  # the gateway's
    fanout_cpu_s: float
    opened_in: float
    lag: tuple[dict[str, float], dict[str, float]]
    # process -> (full collections, seconds they took) during the message phase
    collections: dict[str, tuple[float, float]] = field(default_factory=dict)
    opening_collections: dict[str, tuple[float, float]] = field(default_factory=dict)
    forced: Forced | None = None  # the gateway's forced full collection, every socket open
    meta: dict[str, Any] = field(default_factory=dict)  # what the clients counted
    load: tuple[float, float] = (0.0, 0.0)  # 1-min load average at the phase's start, end


def load_note(before: float) -> str:
    """How busy the machine was: other work on it shows in every figure here."""
    return (
        f"Load average (1 min) {before:.1f} before the run and {os.getloadavg()[0]:.1f} after it, "
        f"on {os.cpu_count()} cores; above about {os.cpu_count()} other work (other engineers' "
        "tests and benchmarks share this machine) competes for the cores and the figures are "
        "noisy: compare runs, not single numbers."
    )


def load_now() -> float:
    return os.getloadavg()[0]


def run() -> Figures:
    """Every part of the scenario (`BENCH_FANOUT_PARTS` to choose), one report."""
    raise_open_files()
    figures, load = Figures("fanout", "make bench SCENARIOS=fanout"), load_now()
    parts = set(os.environ.get("BENCH_FANOUT_PARTS", "main,latency,memory,restart").split(","))
    results = Results()
    with tempfile.TemporaryDirectory() as tmp:
        if "main" in parts:
            _run_main(results, Path(tmp), parts)
        else:
            _run_side(results, Path(tmp), parts, deadline=None)
    report_all(figures, results)
    figures.notes.append(load_note(load))
    return figures


def _run_main(results: Results, tmp: Path, parts: set[str]) -> None:
    """Start our deployment and measure ours, then run the side parts; with a trial's period
    (`heap_period`), run the side parts while waiting for the gateway's periodic full collection
    (those that would not fit run after) and measure ours across it."""
    period = heap_period()
    extra = {"HEAP_FULL_EVERY_S": f"{period:g}"} if period else {}
    with deployment_on(servers().redis_url, ("fanout",), **extra) as d:
        produce_at = None
        if period:
            # The hub's 5 s ticks put the collection 0-6 s after its due time (its start is a
            # little before the health check answered): the phase starts 2 s before it.
            produce_at = d.healthy_at + period - 2.0
            _run_side(results, tmp, parts, deadline=produce_at - (SPREAD_S + 15))
        results.main = _measure(d, tmp, produce_at)
        results.full_gc = period or 0.0
    _run_side(results, tmp, parts, deadline=None)


def heap_period() -> float | None:
    """`BENCH_FANOUT_FULL_GC_S` (trials): a full-collection period for the deployment's
    processes (`HEAP_FULL_EVERY_S`); None: production's policy, which has none."""
    given = os.environ.get("BENCH_FANOUT_FULL_GC_S", "").strip()
    return float(given) if given else None


@dataclass(frozen=True)
class Forced:
    seconds: float  # how long it stopped the gateway
    unreachable: float  # objects it found unreachable
    frozen: float  # the permanent generation right after it
    load: float


def force_full_collection(d: Deployment) -> Forced:
    """SIGUSR1 to the gateway (libs/runtime/heap.py): its full collection's pause and findings,
    from its /metrics once the collection is counted there."""
    port = d.port
    before = heap_figures(port)
    os.kill(d.procs["gateway"].pid, signal.SIGUSR1)
    count = "weelo_full_collection_seconds_count"
    wait_until(lambda: heap_figures(port)[count] > before[count], 60, "the forced collection")
    after = heap_figures(port)
    return Forced(
        after["weelo_full_collection_seconds_sum"] - before["weelo_full_collection_seconds_sum"],
        after["weelo_full_collection_unreachable_objects_total"]
        - before["weelo_full_collection_unreachable_objects_total"],
        after["weelo_gc_frozen_objects"],
        load_now(),
    )


def heap_figures(port: int) -> dict[str, float]:
    """A process's heap figures (libs/runtime/heap.py) from its /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    names = (
        "weelo_full_collection_seconds_count",
        "weelo_full_collection_seconds_sum",
        "weelo_full_collection_unreachable_objects_total",
        "weelo_gc_frozen_objects",
    )
    found = {}
    for name in names:
        match = re.search(rf"^{name} (\S+)$", text, re.M)
        found[name] = float(match.group(1)) if match else 0.0
    return found


def _measure(d: Deployment, tmp: Path, produce_at: float | None = None) -> Measured:
    """Ours: open every socket, measure idle memory, then `RATE` messages/s for `SECONDS`
    from `produce_at` (`time.time()`; at once by default)."""
    total, pid = RATE * SECONDS, d.procs["gateway"].pid
    fanout = d.procs["fanout"].pid
    uvloop.run(_warm_up(d))
    if produce_at is not None:  # open the sockets just before the phase, not 15 min before
        time.sleep(max(0.0, produce_at - SPREAD_S - 15 - time.time()))
    before, loaded = rss_bytes(pid), load_now()
    heaps_opening = _collections(d)
    opening = time.monotonic()
    group = open_clients("weelo", d.ws_url(), total, tmp / "main", deflate=MAIN_DEFLATE)
    opened_in = time.monotonic() - opening
    time.sleep(3.0)  # let the gateway settle with every socket idle
    after, heaps = rss_bytes(pid), _collections(d)
    opened_heaps = _since(heaps_opening, heaps)
    # A full collection with every socket open, outside the phase (not with a trial's period:
    # it would move the periodic one out of the phase).
    forced = force_full_collection(d) if produce_at is None else None
    cpu, lag = cpu_seconds(pid), loop_lag(d.port)
    fanout_cpu, heaps = cpu_seconds(fanout), _collections(d)
    if produce_at is not None and produce_at < time.time() + 0.2:
        # Late (the side parts overran): a start in the past would be a burst, not a rate.
        print("fanout: the message phase starts late; it may miss the collection", flush=True)
        produce_at = None
    commits = uvloop.run(produce(d.database_url, total, RATE, produce_at))
    arrivals, meta = group.collect()
    cpu, lag_after = cpu_seconds(pid) - cpu, loop_lag(d.port)
    fanout_cpu = cpu_seconds(fanout) - fanout_cpu
    collections = _since(heaps, _collections(d))
    published = stream_times(d)
    rss = (before, after)
    lags = (lag, lag_after)
    measured = Measured(commits, arrivals, published, rss, cpu, fanout_cpu, opened_in, lags)
    measured.collections, measured.meta, measured.load = collections, meta, (loaded, load_now())
    measured.opening_collections, measured.forced = opened_heaps, forced
    return measured


def full_collections(port: int) -> tuple[float, float]:
    """A process's `weelo_full_collection_seconds` (count, sum) from its /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    found = dict(re.findall(r"^weelo_full_collection_seconds_(count|sum) (\S+)$", text, re.M))
    return float(found.get("count", 0)), float(found.get("sum", 0))


def _collections(d: Deployment) -> dict[str, tuple[float, float]]:
    return {name: full_collections(port) for name, port in d.ports.items()}


def _since(
    then: dict[str, tuple[float, float]], now: dict[str, tuple[float, float]]
) -> dict[str, tuple[float, float]]:
    """Full collections (count, seconds) of each process between two readings."""
    return {k: (v[0] - then[k][0], v[1] - then[k][1]) for k, v in now.items() if k in then}


# ---- client groups (bench/peers/ws_client.py, the same for every system) ----------------


@dataclass
class ClientGroup:
    """`CLIENTS` client processes holding `SOCKETS` sockets between them."""

    procs: list[Client]
    outs: list[Path]

    def finish(self) -> None:
        """Tell clients that wait for no count (a loss is expected) to report now."""
        for c in self.procs:
            assert c.stdin is not None
            c.stdin.write(b"finish\n")
            c.stdin.flush()

    def collect(self) -> tuple[dict[int, tuple[float, float]], dict[str, Any]]:
        """Wait for every `done`, close them, and read what they got: arrivals by message, and
        their counts summed (`resynced`: the sockets told to resync or to reload)."""
        for c in self.procs:
            assert c.stdout is not None
            if c.stdout.readline().strip() != b"done":
                raise RuntimeError("a client process failed")
        for c in self.procs:
            assert c.stdin is not None
            c.stdin.close()
            c.wait(60)
        arrivals: dict[int, tuple[float, float]] = {}
        meta: dict[str, Any] = {}
        for out in self.outs:
            for k, v in json.loads(out.read_text()).items():
                arrivals[int(k[2:])] = (v[0], v[1])
            for k, v in json.loads(out.with_name(out.name + ".meta.json").read_text()).items():
                meta[k] = meta.get(k, [] if isinstance(v, list) else 0) + v
        return arrivals, meta

    def kill(self) -> None:
        for c in self.procs:
            if c.poll() is None:
                c.kill()
                c.wait()


def open_clients(
    system: str,
    url: str,
    total: int,
    tmp: Path,
    *,
    deflate: bool = False,
    spread_s: float = SPREAD_S,
    reconnect: bool = False,
) -> ClientGroup:
    """Start the client processes for `system` (expecting their share of `total` messages)
    and return once every socket is open."""
    from bench.peers.ws_client import Spec, command

    tmp.mkdir(parents=True, exist_ok=True)
    share, group = SOCKETS // CLIENTS, ClientGroup([], [])
    for k in range(CLIENTS):
        out = tmp / f"client-{k}.json"
        expected = _expected(k * share, share, total) if total else 0
        spec = Spec(system, url, k * share, share, expected, out, deflate, spread_s, reconnect)
        group.outs.append(out)
        group.procs.append(
            subprocess.Popen(command(spec), cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        )
    try:
        for c in group.procs:
            assert c.stdout is not None
            if c.stdout.readline().strip() != b"ready":
                raise RuntimeError(f"a {system} client failed to open its sockets")
    except BaseException:
        group.kill()
        raise
    return group


def stream_times(d: Deployment) -> dict[int, float]:
    """When the relay put each event on the driver stream: its entry id (Redis time, ms)."""
    client = redis_sync.Redis.from_url(d.redis_url)
    found: dict[int, float] = {}
    stream, start = events_stream(d.prefix, "driver"), "-"
    while entries := cast(Any, client.xrange(stream, start, "+", count=1000)):
        for entry_id, fields in entries:
            driver = json.loads(fields[ENVELOPE_FIELD])["event"]["driverId"]
            found[int(driver[2:])] = int(entry_id.split(b"-")[0]) / 1000
        start = "(" + entries[-1][0].decode()
    return found


async def _warm_up(d: Deployment) -> None:
    """Open and close a few sockets so one-off allocations are not counted per connection."""
    for i in range(50):
        token = issue(SECRET, role="transporter", sub=f"warm-{i}", ttl_s=600)
        ws = await connect(d.ws_url(), additional_headers={"Authorization": f"Bearer {token}"})
        await ws.close()


def _report(figures: Figures, m: Measured) -> None:
    got = [(s, t, m.arrivals[s]) for s, t in m.commits.items() if s in m.arrivals]
    offered = f"{RATE:,} messages/s offered for {SECONDS} s to {SOCKETS:,} connected sockets"
    latencies = [a - t for _, t, (a, _) in got]
    figures.latency(f"commit → frame received, {offered}", latencies)
    p99, worst = percentile(latencies, 99), max(latencies)
    figures.add(
        f"target: p99 <= {P99_TARGET_S * 1000:.0f} ms",
        f"{verdict(p99 <= P99_TARGET_S)} (p99 {p99 * 1000:.1f} ms; load {_loads(m.load)})",
    )
    figures.add(
        f"target: max <= {MAX_TARGET_S * 1000:.0f} ms",
        f"{verdict(worst <= MAX_TARGET_S)} (max {worst * 1000:.1f} ms; load {_loads(m.load)})",
    )
    figures.latency("… of which commit → written to the inbox", [i - t for _, t, (_, i) in got])
    on_stream = [(t, m.published[s], i) for s, t, (_, i) in got if s in m.published]
    figures.latency("… … commit → on the stream (relay)", [p - t for t, p, _ in on_stream])
    figures.latency("… … stream → inbox (projector)", [i - p for _, p, i in on_stream])
    figures.latency("… of which inbox → frame received", [a - i for _, _, (a, i) in got])
    figures.add("messages not received", f"{len(m.commits) - len(got)} of {len(m.commits):,}")
    committed = len(m.commits) / (max(m.commits.values()) - min(m.commits.values()))
    figures.add("producer's commit rate", f"{committed:,.0f} messages/s")
    sent = len(m.commits)
    figures.add(
        "gateway CPU per message (hub, socket; relay if it holds it)",
        f"{m.cpu_s / sent * 1e6:.0f} µs ({m.cpu_s:.1f} CPU s for {sent:,})",
    )
    figures.add(
        "fan-out CPU per message (projector; relay if it holds it)",
        f"{m.fanout_cpu_s / sent * 1e6:.0f} µs ({m.fanout_cpu_s:.1f} CPU s for {sent:,})",
    )
    before, after = m.rss
    figures.add(
        "memory per idle connection, in this run (clients "
        f"{'offering' if MAIN_DEFLATE else 'without'} permessage-deflate)",
        f"{(after - before) / SOCKETS / 1024:.1f} KiB (gateway RSS {before / 2**20:.0f} MiB → "
        f"{after / 2**20:.0f} MiB with {SOCKETS:,} sockets)",
    )
    figures.add(
        f"time to open {SOCKETS:,} sockets",
        f"{m.opened_in:.1f} s ({CLIENTS} clients, spread over {SPREAD_S:.0f} s on purpose)",
    )
    _lag_rows(figures, m)
    _worst_seconds(figures, m)
    figures.notes.append(
        "The projector runs in the fan-out process; the outbox relay in whichever of the two "
        "holds its lease. PostgreSQL, Redis, the producer and both client processes share the "
        "machine's two cores with them. Clients "
        + (
            "offer permessage-deflate (BENCH_FANOUT_MAIN_DEFLATE, a trial). "
            if MAIN_DEFLATE
            else "do not offer permessage-deflate. "
        )
        + "The split uses the inbox entry's id (Redis time, "
        "ms) as the moment the projector wrote the message."
    )
    figures.notes.append(
        "What the figures rest on (found while bringing p99 from ~900 ms to under 25 ms): the "
        "gateway and the fan-out freeze their surviving objects out of the garbage collector "
        "every 5 s (libs/runtime/heap.py), since a full collection over 5,000 sockets' "
        "objects stopped it for 0.3-0.5 s every 10-20 s; the relay vacuums the outbox every "
        "2,000 rows it removed, since taking a batch walked every deleted row (1 ms growing to "
        "6 ms within 7 s) until autovacuum came; the producer runs inside PostgreSQL and the "
        "clients do not collect garbage while measuring and keep their sockets open until both "
        "are done, so the measuring tools take neither the cores nor the gateway's time. The "
        "gateway's full collections are counted in the run and one is forced: see their rows."
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


def _worst_seconds(figures: Figures, m: Measured) -> None:
    """p99 of each second of the run: a stall shows as one bad second, saturation as a ramp."""
    start = min(m.commits.values())
    rows: dict[str, dict[int, list[float]]] = {
        "commit → frame": {},
        "… relay": {},
        "… projector": {},
    }
    for s, t in m.commits.items():
        second, arrived, published = int(t - start), m.arrivals.get(s), m.published.get(s)
        if arrived is not None:
            rows["commit → frame"].setdefault(second, []).append(arrived[0] - t)
        if published is not None:
            rows["… relay"].setdefault(second, []).append(published - t)
            if arrived is not None:
                rows["… projector"].setdefault(second, []).append(arrived[1] - published)
    for name, by_second in rows.items():
        p99 = [percentile(v, 99) * 1000 for _, v in sorted(by_second.items())]
        label = f"p99 of each second of the run: {name}"
        figures.add(label, " · ".join(f"{v:.0f}" for v in p99) + " ms")


# ---- the peers, memory per idle socket, the Redis restart ------------------------------

PEERS = ("socketio", "floor")
SYSTEMS = ("weelo", *PEERS)
NAMES = {
    "weelo": "ours (gateway)",
    "socketio": "python-socketio (AsyncRedisManager)",
    "floor": "bare websockets (the floor)",
}


@dataclass(frozen=True)
class Target:
    """One system's server, ready for sockets: the process to weigh and the URL to open."""

    system: str
    pid: int
    url: str
    deployment: Deployment | None = None


@contextlib.contextmanager
def target(
    system: str, redis_url: str, services: Sequence[str] = (), **extra: str
) -> Iterator[Target]:
    """A fresh server of `system` on `redis_url`: ours a gateway (and `services`) on a scratch
    database with `SIDE_DB_POOL` connections per process (the PostgreSQL server is shared);
    a peer its one server process. Warmed up with 50 sockets opened and closed."""
    if system == "weelo":
        with deployment_on(redis_url, services, DB_POOL_SIZE=SIDE_DB_POOL, **extra) as d:
            found = Target(system, d.procs["gateway"].pid, d.ws_url(), d)
            uvloop.run(warm_up(found))
            yield found
        return
    with peer_server(system, redis_url) as found:
        uvloop.run(warm_up(found))
        yield found


@contextlib.contextmanager
def peer_server(system: str, redis_url: str) -> Iterator[Target]:
    """python-socketio under uvicorn, or the bare `websockets` floor, on a free port."""
    port, peers = free_port(), [sys.executable, "-m"]
    if system == "socketio":
        command = [*peers, "bench.peers.socketio_server", str(port), redis_url]
        url = f"ws://127.0.0.1:{port}"
    else:
        command = [*peers, "bench.peers.ws_server", str(port), redis_url, PEER_CHANNEL]
        url = f"ws://127.0.0.1:{port}/"
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE)
    try:
        if system == "socketio":
            wait_until(lambda: _answers(port), 60, "python-socketio's server")
        else:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != b"ready":
                raise RuntimeError("the websockets floor did not start")
        yield Target(system, proc.pid, url)
    finally:
        _stop_all([proc])


def _answers(port: int) -> bool:
    url = f"http://127.0.0.1:{port}/socket.io/?EIO=4&transport=polling"
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


async def warm_up(t: Target) -> None:
    """Open and close 50 sockets so one-off allocations are not counted per connection."""
    from bench.peers.ws_client import SYSTEMS as OPENERS
    from bench.peers.ws_client import Seen, Socket, Spec

    opener = OPENERS[t.system][0]
    spec = Spec(t.system, t.url, 0, 0, 0, Path(os.devnull))
    for i in range(50):
        ws = await opener(Socket(spec, f"warm-{i}", Seen(0)))
        await ws.close()


def peer_producer(system: str, redis_url: str, count: int, rate: float, out: Path) -> Client:
    """The peer's producer process (bench/peers/*_producer.py): `count` messages at `rate`."""
    sizes = [str(count), str(rate), str(SOCKETS), str(FRAME_BYTES - _ENVELOPE[system])]
    if system == "socketio":
        args = ["bench.peers.socketio_producer", redis_url, *sizes, str(out)]
    else:
        args = ["bench.peers.ws_producer", redis_url, PEER_CHANNEL, *sizes, str(out)]
    return subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT)


# What a system adds around the producer's JSON on the wire: Socket.IO's `42["m",...]`.
_ENVELOPE = {"socketio": len('42["m",]'), "floor": 0}


@dataclass
class PeerMeasured:
    arrivals: dict[int, tuple[float, float]]
    tally: dict[str, float]
    rss: tuple[int, int]
    cpu_s: float
    opened_in: float
    meta: dict[str, Any]
    load: tuple[float, float]


def measure_peer(system: str, tmp: Path) -> PeerMeasured:
    """A peer at `RATE` messages/s for `SECONDS` to `SOCKETS` sockets, as ours is measured."""
    total = RATE * SECONDS
    with peer_server(system, servers().redis_url) as t:
        uvloop.run(warm_up(t))
        before, loaded, opening = rss_bytes(t.pid), load_now(), time.monotonic()
        group = open_clients(system, t.url, total, tmp / f"latency-{system}")
        opened_in = time.monotonic() - opening
        time.sleep(3.0)
        after, cpu = rss_bytes(t.pid), cpu_seconds(t.pid)
        out = tmp / f"producer-{system}.json"
        producer = peer_producer(system, servers().redis_url, total, RATE, out)
        producer.wait(SECONDS + 120)
        time.sleep(2.0)  # then whatever has not come is lost
        group.finish()
        arrivals, meta = group.collect()
        cpu = cpu_seconds(t.pid) - cpu
    tally = json.loads(out.read_text())
    return PeerMeasured(
        arrivals, tally, (before, after), cpu, opened_in, meta, (loaded, load_now())
    )


@dataclass
class Idle:
    rss: tuple[int, int]
    negotiated: int
    load: tuple[float, float]

    def per_socket(self) -> float:
        return (self.rss[1] - self.rss[0]) / SOCKETS


def idle_memory(system: str, deflate: bool, tmp: Path) -> Idle:
    """RSS of a fresh server before and after `SOCKETS` idle sockets whose clients offer
    permessage-deflate (`deflate`) or not; how many sockets had it negotiated."""
    with target(system, servers().redis_url) as t:
        before, loaded = rss_bytes(t.pid), load_now()
        group = open_clients(
            system,
            t.url,
            0,
            tmp / f"idle-{system}-{int(deflate)}",
            deflate=deflate,
            spread_s=MEMORY_SPREAD_S,
        )
        time.sleep(3.0)
        after = rss_bytes(t.pid)
        _, meta = group.collect()
    return Idle((before, after), int(meta.get("negotiated", 0)), (loaded, load_now()))


@dataclass
class OwnRedis:
    """A redis-server of the benchmark's own (its defaults: RDB snapshots, saved on SIGTERM)."""

    port: int
    directory: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--dir", str(self.directory), "--logfile", "redis.log"]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        client = redis_sync.Redis.from_url(self.url)
        wait_until(lambda: _pings(client), 30, "the benchmark's own redis-server")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            _stop_all([self.proc])
        self.proc = None

    def bounce(self, after_s: float, down_s: float, times: dict[str, float]) -> None:
        """In `after_s`, stop Redis (SIGTERM: it saves and exits), start it again `down_s`
        later on the same port; `times` gets when it stopped and when it answered again."""
        time.sleep(after_s)
        self.stop()
        times["down"] = time.time()
        time.sleep(down_s)
        self.start()
        times["up"] = time.time()


def _pings(client: redis_sync.Redis) -> bool:
    try:
        return bool(client.ping())
    except (redis_sync.RedisError, OSError):
        return False


@contextlib.contextmanager
def own_redis(directory: Path) -> Iterator[OwnRedis]:
    directory.mkdir(parents=True, exist_ok=True)
    server = OwnRedis(free_port(), directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Loss:
    sent: int
    received: set[int]
    resynced: set[str]  # sockets told to resync, or that reopened with no id (must reload)
    meta: dict[str, Any]
    times: dict[str, float]
    load: tuple[float, float]
    failed: int = 0  # publishes the producer saw fail

    def lost(self) -> list[int]:
        return [s for s in range(self.sent) if s not in self.received]

    def covered(self) -> int:
        """Lost messages whose socket was told to reload its state."""
        return sum(1 for s in self.lost() if transporter(s % SOCKETS) in self.resynced)


def restart_loss(system: str, tmp: Path) -> Loss:
    """Every socket connected, `RESTART_RATE` messages/s for `RESTART_SECONDS`, the system's
    Redis (its own) stopped `RESTART_AT_S` in for `DOWN_S`; what the clients finally have."""
    count, times = RESTART_RATE * RESTART_SECONDS, dict[str, float]()
    with own_redis(tmp / f"redis-{system}") as r, target(system, r.url, ("fanout",)) as t:
        loaded = load_now()
        group = open_clients(
            system,
            t.url,
            count,
            tmp / f"restart-{system}",
            spread_s=MEMORY_SPREAD_S,
            reconnect=True,
        )
        bounce = threading.Thread(target=r.bounce, args=(RESTART_AT_S + 0.5, DOWN_S, times))
        bounce.start()
        failed = 0
        if t.deployment is not None:
            commits = uvloop.run(produce(t.deployment.database_url, count, RESTART_RATE))
            sent = len(commits)
        else:
            out = tmp / f"restart-producer-{system}.json"
            producer = peer_producer(system, r.url, count, RESTART_RATE, out)
            producer.wait(RESTART_SECONDS + 120)
            tally = json.loads(out.read_text())
            sent, failed = int(tally["offered"]), int(tally["failed"])
        bounce.join()
        time.sleep(GRACE_S)
        group.finish()
        arrivals, meta = group.collect()
    received = set(arrivals) & set(range(sent))
    resynced = set(meta.get("resynced", []))
    return Loss(sent, received, resynced, meta, times, (loaded, load_now()), failed)


@dataclass
class Results:
    main: Measured | None = None
    full_gc: float = 0.0  # a trial's full-collection period (BENCH_FANOUT_FULL_GC_S); 0: none
    latency: dict[str, PeerMeasured] = field(default_factory=dict)
    memory: dict[tuple[str, bool], Idle] = field(default_factory=dict)
    restart: dict[str, Loss] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)  # part -> the error that stopped it


Job = tuple[str, float, Callable[[Results, Path], None]]


def _jobs(parts: set[str]) -> list[Job]:
    """Every side part: its name, a generous estimate of its seconds, what runs it."""
    jobs: list[Job] = []
    if "latency" in parts:
        for system in PEERS:
            jobs.append((f"latency-{system}", SPREAD_S + SECONDS + 40, _latency_job(system)))
    if "memory" in parts:
        for system in SYSTEMS:
            for deflate in (False, True):
                jobs.append(
                    (
                        f"memory-{system}-{deflate}",
                        MEMORY_SPREAD_S + 40,
                        _memory_job(system, deflate),
                    )
                )
    if "restart" in parts:
        for system in SYSTEMS:
            estimate = MEMORY_SPREAD_S + RESTART_SECONDS + GRACE_S + 40
            jobs.append((f"restart-{system}", estimate, _restart_job(system)))
    return jobs


def _latency_job(system: str) -> Callable[[Results, Path], None]:
    def job(r: Results, tmp: Path) -> None:
        r.latency[system] = measure_peer(system, tmp)

    return job


def _memory_job(system: str, deflate: bool) -> Callable[[Results, Path], None]:
    def job(r: Results, tmp: Path) -> None:
        r.memory[(system, deflate)] = idle_memory(system, deflate, tmp)

    return job


def _restart_job(system: str) -> Callable[[Results, Path], None]:
    def job(r: Results, tmp: Path) -> None:
        r.restart[system] = restart_loss(system, tmp)

    return job


def _run_side(results: Results, tmp: Path, parts: set[str], deadline: float | None) -> None:
    """Run the side parts not done yet, in order, each only if it ends before `deadline`
    (`time.time()`; None: all of them)."""
    for name, estimate, job in _jobs(parts):
        if name in results.done:
            continue
        if deadline is not None and time.time() + estimate > deadline:
            break
        print(f"fanout: {name}", flush=True)
        results.done.add(name)
        try:
            job(results, tmp / name)
        except Exception as e:  # the other parts still report; this one says why it has none
            traceback.print_exc()
            results.failed[name] = repr(e)


# ---- the report of every part ---------------------------------------------------------


def _loads(load: tuple[float, float]) -> str:
    return f"{load[0]:.1f} → {load[1]:.1f}"


def report_all(figures: Figures, r: Results) -> None:
    """Ours first (as before), then each part with the peers' rows beside ours and ratios."""
    if r.main is not None:
        _report(figures, r.main)
        _full_gc_rows(figures, r)
    _latency_rows(figures, r)
    _memory_rows(figures, r)
    _restart_rows(figures, r)
    for name, error in r.failed.items():
        figures.add(f"part {name}", f"**failed**: {error}")
    figures.notes.append(_peers_note())


def _full_gc_rows(figures: Figures, r: Results) -> None:
    m = r.main
    assert m is not None
    config = HeapConfig()
    how = (
        f"a trial's period of {r.full_gc:.0f} s (HEAP_FULL_EVERY_S) besides production's policy"
        if r.full_gc
        else f"production's policy: only once the permanent generation holds "
        f"{config.growth_factor:g}x what it held after the last one and "
        f"{config.min_growth:,} objects more; no period"
    )
    for phase, counted in (
        ("while the sockets opened", m.opening_collections),
        ("during the message phase", m.collections),
    ):
        for name, (count, took) in sorted(counted.items()):
            figures.add(
                f"full garbage collections {phase}: {name}",
                f"{count:.0f}, stopping it {took * 1000:.0f} ms in all ({how}; "
                "weelo_full_collection_seconds)",
            )
    gateway = m.collections.get("gateway", (0.0, 0.0))
    figures.add(
        "the run contains the gateway's full collection",
        "yes"
        if gateway[0] >= 1
        else "no: the policy ran none in the message phase (the forced one is its own row)"
        if not r.full_gc
        else "**no**: it came outside the message phase",
    )
    if m.forced is not None:
        f = m.forced
        figures.add(
            f"a forced full collection in the gateway, {SOCKETS:,} sockets open (SIGUSR1, "
            "before the message phase)",
            f"stopped it {f.seconds * 1000:.0f} ms; {f.unreachable:,.0f} unreachable objects "
            f"found; {f.frozen:,.0f} objects frozen after it; load {f.load:.1f}",
        )


def _stats(latencies: Sequence[float]) -> tuple[float, float, float]:
    ordered = sorted(latencies)
    return percentile(ordered, 50), percentile(ordered, 99), ordered[-1]


def _ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}x" if theirs > 0 else "n/a"


def _latency_rows(figures: Figures, r: Results) -> None:
    ours = None
    if r.main is not None:
        m = r.main
        ours = [m.arrivals[s][0] - t for s, t in m.commits.items() if s in m.arrivals]
    for system, peer in r.latency.items():
        got = [a - sent for a, sent in peer.arrivals.values()]
        offered = int(peer.tally["offered"])
        name = NAMES[system]
        if got:
            figures.latency(f"{name}: emit → frame received, same sockets, rate and size", got)
        lost = offered - len(set(peer.arrivals) & set(range(offered)))
        size = peer.meta.get("frame_bytes", 0) / max(1, peer.meta.get("frames", 0))
        figures.add(
            f"{name}: messages not received; mean frame size; server CPU per message",
            f"{lost} of {offered:,}; {size:.0f} bytes; {peer.cpu_s / max(1, offered) * 1e6:.0f} µs"
            f" ({peer.cpu_s:.1f} CPU s); load {_loads(peer.load)}",
        )
        if ours and got:
            o, t = _stats(ours), _stats(got)
            figures.add(
                f"ours ÷ {name}: p50 · p99 · max",
                f"{_ratio(o[0], t[0])} · {_ratio(o[1], t[1])} · {_ratio(o[2], t[2])} "
                "(ours from the PostgreSQL commit, theirs from the emit)",
            )
    if r.main is not None and r.main.meta.get("frames"):
        size = r.main.meta["frame_bytes"] / r.main.meta["frames"]
        figures.add("ours: mean frame size", f"{size:.0f} bytes")


def _memory_rows(figures: Figures, r: Results) -> None:
    for deflate in (False, True):
        ours = r.memory.get(("weelo", deflate))
        offer = "offering permessage-deflate" if deflate else "not offering permessage-deflate"
        for system in SYSTEMS:
            idle = r.memory.get((system, deflate))
            if idle is None:
                continue
            before, after = idle.rss
            ratio = (
                f"; ours ÷ this: {_ratio(ours.per_socket(), idle.per_socket())}"
                if ours is not None and system != "weelo"
                else ""
            )
            figures.add(
                f"{NAMES[system]}: memory per idle socket, clients {offer}",
                f"{idle.per_socket() / 1024:.1f} KiB (RSS {before / 2**20:.0f} → "
                f"{after / 2**20:.0f} MiB with {SOCKETS:,}; deflate negotiated on "
                f"{idle.negotiated:,}){ratio}; load {_loads(idle.load)}",
            )
    _memory_target(figures, r.memory.get(("weelo", True)))


def _memory_target(figures: Figures, idle: Idle | None) -> None:
    if idle is None:
        return
    label = "target: <= 30 KiB per idle socket with permessage-deflate negotiated"
    per = idle.per_socket() / 1024
    if idle.negotiated == 0:
        figures.add(
            label,
            f"**missed** as worded: the gateway negotiated it on no socket; a client that "
            f"offers it (as browsers do) costs {per:.1f} KiB, {verdict(per <= 30)} against "
            f"30 KiB; load {_loads(idle.load)}",
        )
        return
    # Met only when every socket negotiated it: a server that declined some would weigh less.
    met = idle.per_socket() <= MEMORY_TARGET_BYTES and idle.negotiated == SOCKETS
    figures.add(
        label,
        f"{verdict(met)} ({per:.1f} KiB; deflate negotiated on {idle.negotiated:,} of "
        f"{SOCKETS:,}; load {_loads(idle.load)})",
    )


def _restart_rows(figures: Figures, r: Results) -> None:
    for system, loss in r.restart.items():
        lost = loss.lost()
        covered = loss.covered()
        down = loss.times.get("up", 0) - loss.times.get("down", 0)
        failed = f"; {loss.failed} publishes raised" if loss.failed else ""
        figures.add(
            f"{NAMES[system]}: Redis stopped {down:.1f} s with every socket connected, "
            f"{RESTART_RATE}/s for {RESTART_SECONDS} s",
            f"{len(lost):,} of {loss.sent:,} messages never arrived as frames ({covered:,} of "
            f"them to sockets told to reload their state: resync_required, or reopened with no "
            f"id); {loss.meta.get('reconnects', 0):,} sockets reopened; "
            f"{len(loss.resynced):,} told to reload{failed}; load {_loads(loss.load)}",
        )
    ours = r.restart.get("weelo")
    if ours is not None:
        missing, covered = len(ours.lost()), ours.covered()
        figures.add(
            "target: 0 messages lost across the Redis restart",
            f"{verdict(missing == 0)} ({missing:,} lost, {covered:,} of them told to reload)",
        )


def _peers_note() -> str:
    return (
        "Peers run in the same `make bench` on the same machine, each with the same client "
        "processes (bench/peers/ws_client.py: raw Engine.IO/Socket.IO frames for "
        "python-socketio rather than socketio.AsyncClient, which would load the cores the "
        "servers need), the same sockets, rate and message size (padded to our frame's size). "
        "python-socketio: socketio.AsyncServer(client_manager=AsyncRedisManager(url)) in "
        "socketio.ASGIApp under uvicorn, its defaults otherwise (one process), messages emitted "
        "from another process through AsyncRedisManager(url, write_only=True) to each "
        "transporter's room. The floor: websockets.asyncio.server with its defaults, reading "
        "one Redis pub/sub channel and sending each message to its transporter's sockets "
        "(uvloop, as uvicorn picks for the others). Their latency runs from the emit (the send "
        "time in the message), ours from the PostgreSQL commit, through the relay and the "
        "projector as well. Memory: a fresh server of each, RSS before and after the idle "
        "sockets (ours: a gateway only). Redis restart: a redis-server of the benchmark's own "
        "on a free port with its defaults (RDB snapshots, so SIGTERM saves and the restart "
        "loads them), stopped with SIGTERM and started again on the port; clients reopen a "
        "closed socket after 1 s (ours with lastEventId), and report 15 s after the last send."
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["client"]:
        url, first, count, expected, out = sys.argv[2:7]
        uvloop.run(client_main(url, int(first), int(count), int(expected), Path(out)))
