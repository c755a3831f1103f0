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
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
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
from typing import Any, cast

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
    verdict,
    wait_until,
    weelo,
)
from libs.events.catalogue import DriverAvailabilityChanged
from libs.events.codec import ENVELOPE_FIELD, encode
from libs.events.store import OUTBOX_CHANNEL, event_type
from libs.events.streams import events_stream
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
P99_TARGET_S = 0.025
MEMORY_TARGET_BYTES = 30_000
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
def deployment(services: Sequence[str] = ("fanout",), **extra: str) -> Iterator[Deployment]:
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


async def produce(url: str, count: int, rate: float) -> dict[int, float]:
    """`count` availability changes, one transaction each, offered at `rate` per second."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(_PRODUCER.replace("%(channel)s", f"'{OUTBOX_CHANNEL}'"))
    start_at = time.time() + 0.5
    shares = [list(range(k, count, WRITERS)) for k in range(WRITERS)]
    await asyncio.gather(*(_writer(url, share, start_at, rate) for share in shares))
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute("SELECT seq, at FROM bench_commits")
        return {seq: at for seq, at in await cur.fetchall()}


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
    published: dict[int, float]
    rss: tuple[int, int]
    cpu_s: float  # the gateway's
    fanout_cpu_s: float
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
    fanout = d.procs["fanout"].pid
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
    fanout_cpu = cpu_seconds(fanout)
    commits = uvloop.run(produce(d.database_url, total, RATE))
    for c in clients:
        assert c.stdout is not None and c.stdout.readline().strip() == b"done"
    cpu, lag_after = cpu_seconds(pid) - cpu, loop_lag(d.port)
    fanout_cpu = cpu_seconds(fanout) - fanout_cpu
    for c in clients:
        assert c.stdin is not None
        c.stdin.close()
        c.wait(60)
    arrivals = {
        int(k[2:]): (v[0], v[1]) for out in outs for k, v in json.loads(out.read_text()).items()
    }
    published = stream_times(d)
    rss = (before, after)
    return Measured(commits, arrivals, published, rss, cpu, fanout_cpu, opened_in, (lag, lag_after))


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
    met = verdict(percentile(latencies, 99) < P99_TARGET_S)
    figures.add("target: p99 under 25 ms", met)
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
        "memory per idle connection",
        f"{(after - before) / SOCKETS / 1024:.1f} KiB (gateway RSS {before / 2**20:.0f} MiB → "
        f"{after / 2**20:.0f} MiB with {SOCKETS:,} sockets); target at most 30 KB: "
        f"{verdict((after - before) / SOCKETS <= MEMORY_TARGET_BYTES)}",
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
        "do not negotiate permessage-deflate. The split uses the inbox entry's id (Redis time, "
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
        "are done, so the measuring tools take neither the cores nor the gateway's time. Memory "
        "per connection is measured with clients that do not negotiate permessage-deflate; with "
        "it (browsers do) uvicorn keeps zlib contexts per socket: about 54 KiB each."
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


if __name__ == "__main__":
    if sys.argv[1:2] == ["client"]:
        url, first, count, expected, out = sys.argv[2:7]
        uvloop.run(client_main(url, int(first), int(count), int(expected), Path(out)))
