"""`search`: customers' searches through the gateway against a fleet of 10,000 vehicles, and the
`new_broadcast` fan-out each one makes.

The same real deployment as `accept-storm` (gateway, broadcast, acceptance, timer and fan-out
processes on a scratch database). The fleet: 10,000 vehicles of 10 types owned by 2,000
transporters (5 each), spread uniformly over a 100 x 100 km square, written straight into the
event store and read model. Each search is a new customer's, for 1 to 3 types (1 to 3 trucks
each) at a random pickup in the square, so it is matched within `BROADCAST_RADIUS_KM` (25 km)
and broadcast to a few hundred transporters. Searches are offered at fixed times (open loop)
and latency counts from the scheduled time.

After each rate, once every event is handled, every notified transporter's inbox (the Redis
stream its sockets are fed from) is read back: each pair the broadcast service recorded in
`broadcast_recipients` must have the broadcast's `new_broadcast` there, and a search's fan-out
lag is from its `broadcast_started` event's `recorded_at` (in the search's transaction) to the
id of the last of its recipients' entries (Redis's clock when the projector wrote it).

First 20 searches/s; then rising rates until one is not sustained: sustained means no answer
other than 201, at least 95% of the offered rate answered, p99 within the search's own target
(`P99_TARGET_S`, 50 ms, the same as at 20/s), and the fan-out kept up: every notified inbox got
its `new_broadcast`, with the p99 of the searches' fan-out lag within `NOTIFY_P99_BOUND_S` (50 ms).
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import statistics
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import psycopg
import redis as redis_sync
import uvloop
from redis.asyncio import Redis as AsyncRedis

from bench.accept_storm import (
    CENTRE,
    RESET,
    TYPES,
    ConnPool,
    CpuMeter,
    Deployment,
    deployment,
    load_text,
    search_body,
    seed_vehicles,
    settle,
    wait_caught_up,
)
from bench.common import Figures, percentile, verdict
from libs.inbox.inbox import Inbox, user_key

VEHICLES = 10_000
PER_TRANSPORTER = 5
SIDE_KM = 100.0
STEADY_RATE = 20
STEADY_SECONDS = 15
LADDER = (40, 60, 80, 100, 125, 150, 200)
LADDER_SECONDS = 8
SUSTAINED_SHARE = 0.95
P99_TARGET_S = 0.050  # a search's answer, at 20/s and for any rate called sustained
NOTIFY_P99_BOUND_S = 0.050  # a search's commit → the last of its notified inboxes, p99
KM_PER_DEGREE = 111.195
INBOX_READS_PER_CALL = 200


def square_point(rng: random.Random) -> tuple[float, float]:
    """A uniform point of the SIDE_KM square centred on CENTRE."""
    dlat = SIDE_KM / 2 / KM_PER_DEGREE
    dlng = dlat / math.cos(math.radians(CENTRE[0]))
    return (
        CENTRE[0] + rng.uniform(-dlat, dlat),
        CENTRE[1] + rng.uniform(-dlng, dlng),
    )


def fleet(rng: random.Random) -> list[tuple[str, str, str, float, float]]:
    return [
        (f"v-{i:05d}", f"t-{i // PER_TRANSPORTER:04d}", rng.choice(TYPES), *square_point(rng))
        for i in range(VEHICLES)
    ]


def random_search(rng: random.Random) -> bytes:
    trucks = [(t, rng.randint(1, 3)) for t in rng.sample(TYPES, rng.randint(1, 3))]
    return search_body(trucks, square_point(rng), square_point(rng))


@dataclass(frozen=True)
class Fanout:
    """Whether the notified transporters' inboxes got each search's `new_broadcast`."""

    expected: int  # (broadcast, transporter) pairs in `broadcast_recipients`
    delivered: int  # of them with that broadcast's `new_broadcast` in the transporter's inbox
    lags: list[float]  # per search: commit → its last notified inbox written (s)

    def kept_up(self) -> bool:
        return (
            self.delivered == self.expected
            and bool(self.lags)
            and percentile(self.lags, 99) <= NOTIFY_P99_BOUND_S
        )

    def summary(self) -> str:
        ms = [s * 1000 for s in self.lags] or [math.nan]
        return (
            f"new_broadcast in {self.delivered:,} of {self.expected:,} notified inboxes; commit → "
            f"last inbox p50 {statistics.median(ms):.1f} ms · p99 {percentile(ms, 99):.1f} ms · "
            f"max {max(ms):.1f} ms (n={len(self.lags)})"
        )


@dataclass
class Run:
    offered: float
    latencies: list[float] = field(default_factory=list)
    notified: list[int] = field(default_factory=list)
    broadcasts: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    resets: int = 0  # searches whose connection closed before their answer (never sent again)
    wall: float = 0.0
    began_ms: int = 0  # time.time() in ms when the first search was due
    last_answer: float = 0.0  # time.time() of the latest answer
    load: str = ""
    fanout: Fanout | None = None

    @property
    def achieved(self) -> float:
        return len(self.latencies) / self.wall

    def p99(self) -> float:
        return percentile(self.latencies, 99)

    def shortfalls(self) -> list[str]:
        """Why this rate is not sustained (nothing when it is)."""
        out = []
        if self.errors:
            out.append(f"{len(self.errors)} answers other than 201")
        if self.achieved < SUSTAINED_SHARE * self.offered:
            out.append(f"under {SUSTAINED_SHARE:.0%} of the offered rate answered")
        if self.p99() > P99_TARGET_S:
            out.append(f"p99 over {P99_TARGET_S * 1000:.0f} ms")
        if self.fanout is None or not self.fanout.kept_up():
            out.append("the fan-out did not keep up")
        return out

    def summary(self) -> str:
        ms = [s * 1000 for s in self.latencies]
        return (
            f"{self.achieved:.1f} searches/s answered · p50 {statistics.median(ms):.1f} ms · "
            f"p99 {percentile(ms, 99):.1f} ms · max {max(ms):.1f} ms"
            + (f" · {len(self.errors)} errors" if self.errors else "")
            + f" · {self.resets} connection resets"
        )


async def offer(d: Deployment, rate: float, seconds: float, rng: random.Random) -> Run:
    """`rate` searches a second for `seconds`, each of a new customer, at fixed times."""
    pool, run = ConnPool(d.port), Run(rate)
    await pool.fill(min(100, int(rate)))
    count = int(rate * seconds)
    work = [
        (random_search(rng), d.token("customer", f"c-{uuid.uuid4().hex[:12]}"))
        for _ in range(count)
    ]
    start = time.monotonic() + 0.5
    run.began_ms = int((time.time() + 0.5) * 1000)
    load = os.getloadavg()[0]

    async def at(due: float, body: bytes, token: str) -> None:
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        status, raw = await pool.request("POST", "/v1/broadcasts", token, body)
        run.latencies.append(time.monotonic() - due)
        run.last_answer = max(run.last_answer, time.time())
        if status == RESET:
            run.resets += 1
        if status != 201:
            run.errors.append(f"{status} {raw[:200]!r}")
            return
        created = msgspec.json.decode(raw)
        run.notified.append(created["notifiedTransporters"])
        run.broadcasts.append(created["broadcastId"])

    await asyncio.gather(*(at(start + i / rate, b, t) for i, (b, t) in enumerate(work)))
    run.wall = time.monotonic() - start
    run.load = load_text(load)
    await pool.close()
    return run


def check_stored(url: str, runs: Sequence[Run]) -> None:
    """Every 201 names its own broadcast, and the database holds each of them."""
    ids = [b for run in runs for b in run.broadcasts]
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(DISTINCT broadcast_id) FROM broadcasts WHERE broadcast_id = ANY(%s)",
            (ids,),
        ).fetchone()
    assert row is not None and row[0] == len(ids) == len(set(ids))


def fanout_of(d: Deployment, run: Run) -> Fanout:
    """Read back, once every event is handled, which notified inboxes got each of the run's
    searches and when (see the module's docstring)."""
    with psycopg.connect(d.database_url) as conn:
        recipients = conn.execute(
            "SELECT broadcast_id, transporter_id FROM broadcast_recipients"
            " WHERE broadcast_id = ANY(%s)",
            (run.broadcasts,),
        ).fetchall()
        started = {
            stream.removeprefix("broadcast-"): float(at)
            for stream, at in conn.execute(
                "SELECT stream_id, extract(epoch FROM recorded_at) FROM events"
                " WHERE event_type = 'broadcast_started' AND stream_id = ANY(%s)",
                ([f"broadcast-{b}" for b in run.broadcasts],),
            ).fetchall()
        }
    arrived = _new_broadcasts(d, sorted({t for _, t in recipients}), run.began_ms)
    last: dict[str, float] = {}
    delivered = 0
    for broadcast, transporter in recipients:
        at = arrived.get((broadcast, transporter))
        if at is not None:
            delivered += 1
            last[broadcast] = max(last.get(broadcast, 0.0), at)
    lags = [at - started[b] for b, at in last.items() if b in started]
    return Fanout(len(recipients), delivered, lags)


def _new_broadcasts(
    d: Deployment, transporters: Sequence[str], since_ms: int
) -> dict[tuple[str, str], float]:
    """(broadcast, transporter) -> when its `new_broadcast` entry was written (epoch s), for the
    entries of these transporters' inboxes from `since_ms` on."""
    inbox = Inbox(AsyncRedis.from_url(d.redis_url), d.prefix)  # only for its key names
    client = redis_sync.Redis.from_url(d.redis_url)
    found: dict[tuple[str, str], float] = {}
    for i in range(0, len(transporters), INBOX_READS_PER_CALL):
        batch = transporters[i : i + INBOX_READS_PER_CALL]
        pipe = client.pipeline(transaction=False)
        for t in batch:
            pipe.xrange(inbox.stream(user_key("transporter", t)), min=f"{since_ms}-0")
        replies: list[Any] = pipe.execute()
        for transporter, entries in zip(batch, replies, strict=True):
            for entry_id, fields in entries:
                frame = msgspec.json.decode(fields[b"f"])
                if frame.get("type") == "new_broadcast":
                    ms = int(entry_id.split(b"-")[0])
                    found[(frame["data"]["broadcastId"], transporter)] = ms / 1000
    return found


async def _measure(d: Deployment, figures: Figures) -> list[Run]:
    rng = random.Random(11)
    steady_seconds = int(os.environ.get("BENCH_SEARCH_STEADY_SECONDS", STEADY_SECONDS))
    await seed_vehicles(d.database_url, fleet(rng))
    wait_caught_up(d, "the fleet's events")
    meter = CpuMeter(d)
    with meter.measure():
        steady = await offer(d, STEADY_RATE, steady_seconds, rng)
    p99 = steady.p99()
    figures.latency(
        f"{STEADY_RATE} searches/s offered for {steady_seconds} s (open loop, from the scheduled "
        f"time); target p99 at most {P99_TARGET_S * 1000:.0f} ms: {verdict(p99 <= P99_TARGET_S)}"
        f"; {steady.load}",
        steady.latencies,
    )
    figures.add(
        "transporters notified per search",
        f"mean {statistics.mean(steady.notified):.0f}, max {max(steady.notified)}",
    )
    figures.add(f"CPU per search at {STEADY_RATE}/s", meter.per_request(len(steady.latencies)))
    figures.add(
        f"Redis commands per search at {STEADY_RATE}/s",
        meter.redis_per_request(len(steady.latencies)),
    )
    figures.add(
        f"{STEADY_RATE}/s: connection resets",
        f"{steady.resets} of {len(steady.latencies):,} searches got no answer (each counted as "
        "an error, never sent again)",
    )
    settle(d, figures, f"{STEADY_RATE}/s", steady.last_answer)
    steady.fanout = fanout_of(d, steady)
    figures.add(
        f"{STEADY_RATE}/s: new_broadcast fan-out; bound: every notified inbox, p99 at most "
        f"{NOTIFY_P99_BOUND_S * 1000:.0f} ms",
        f"{verdict(steady.fanout.kept_up())}: {steady.fanout.summary()}",
    )
    if steady.errors:
        figures.add(f"answers other than 201 at {STEADY_RATE}/s", "; ".join(steady.errors[:3]))
    return [steady, *await _ladder(d, figures, rng)]


async def _ladder(d: Deployment, figures: Figures, rng: random.Random) -> list[Run]:
    seconds = int(os.environ.get("BENCH_SEARCH_LADDER_SECONDS", LADDER_SECONDS))
    runs: list[Run] = []
    best: Run | None = None
    for rate in LADDER:
        meter = CpuMeter(d)
        with meter.measure():
            run = await offer(d, rate, seconds, rng)
        runs.append(run)
        wait_caught_up(d, f"the events of {rate}/s")
        run.fanout = fanout_of(d, run)
        missing = run.shortfalls()
        outcome = "sustained" if not missing else f"**not sustained**: {', '.join(missing)}"
        figures.add(
            f"{rate} searches/s offered for {seconds} s",
            f"{run.summary()}; {run.fanout.summary()} ({outcome}); {run.load}",
        )
        if missing:
            figures.add(
                f"CPU per search at {rate}/s offered", meter.per_request(len(run.latencies))
            )
            break
        best = run
    figures.add(
        "**highest sustained rate**",
        f"{best.offered:.0f} searches/s offered ({best.summary()}); {best.load}"
        if best
        else f"below {LADDER[0]}/s",
    )
    return runs


def run() -> Figures:
    figures = Figures("search", "make bench SCENARIOS=search")
    with deployment() as d:
        load = os.getloadavg()[0]
        runs = uvloop.run(_measure(d, figures))
        check_stored(d.database_url, runs)
    figures.notes.append(
        "One gateway, broadcast, acceptance, timer and fan-out process (`weelo run`), "
        "PostgreSQL, Redis and the load generator share the machine. A rate is sustained when "
        "every answer is a 201, at least "
        f"{SUSTAINED_SHARE:.0%} of it is answered, p99 is within the search's target "
        f"({P99_TARGET_S * 1000:.0f} ms) and the fan-out kept up: every notified transporter's "
        "inbox (the Redis stream its sockets are fed from) got the search's `new_broadcast`, "
        "and the p99 over the searches of commit (the `broadcast_started` event's `recorded_at`, "
        "in the search's transaction) → the last of its recipients' inbox entries (the entry id: "
        f"Redis's clock when the projector wrote it) is at most {NOTIFY_P99_BOUND_S * 1000:.0f} "
        "ms. The ladder stops at the first rate that is not sustained. Every search is a new "
        "customer's `POST /v1/broadcasts`; broadcasts stay active (timeout 1 h), as they pile up "
        "in production between expiries. CPU, Redis commands and 'last event handled' are "
        "measured as in `accept-storm`; at a low rate each process's idle work (polling, relay) "
        "weighs more per search. The fan-out's share is the realtime projector's."
    )
    figures.notes.append(
        f"Load average (1 min) {load:.2f} at the start and {os.getloadavg()[0]:.2f} at the end, "
        f"on {os.cpu_count()} cores; other work (other engineers' tests and benchmarks) shares "
        "this machine: compare runs, not single numbers."
    )
    return figures
