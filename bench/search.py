"""`search`: customers' searches through the gateway against a fleet of 10,000 vehicles.

The same real deployment as `accept-storm` (gateway, broadcast, acceptance and timer processes on
a scratch database). The fleet: 10,000 vehicles of 10 types owned by 2,000 transporters (5
each), spread uniformly over a 100 x 100 km square, written straight into the event store and
read model. Each search is a new customer's, for 1 to 3 types (1 to 3 trucks each) at a random
pickup in the square, so it is matched within `BROADCAST_RADIUS_KM` (25 km) and broadcast to a
few hundred transporters. Searches are offered at fixed times (open loop) and latency counts
from the scheduled time. First 20 searches/s; then rising rates until one is no longer
sustained (fewer than 95% of the offered rate answered, or p99 over 1 s).
"""

from __future__ import annotations

import asyncio
import math
import random
import statistics
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec
import psycopg
import uvloop

from bench.accept_storm import (
    CENTRE,
    P99_TARGET_S,
    TYPES,
    ConnPool,
    CpuMeter,
    Deployment,
    deployment,
    search_body,
    seed_vehicles,
    settle,
    wait_caught_up,
)
from bench.common import Figures, percentile, verdict

VEHICLES = 10_000
PER_TRANSPORTER = 5
SIDE_KM = 100.0
STEADY_RATE = 20
STEADY_SECONDS = 15
LADDER = (40, 60, 80, 100, 125, 150, 200)
LADDER_SECONDS = 8
SUSTAINED_SHARE = 0.95
SUSTAINED_P99_S = 1.0
KM_PER_DEGREE = 111.195


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


@dataclass
class Run:
    offered: float
    latencies: list[float] = field(default_factory=list)
    notified: list[int] = field(default_factory=list)
    broadcasts: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    wall: float = 0.0

    @property
    def achieved(self) -> float:
        return len(self.latencies) / self.wall

    def sustained(self) -> bool:
        return (
            not self.errors
            and self.achieved >= SUSTAINED_SHARE * self.offered
            and percentile(self.latencies, 99) <= SUSTAINED_P99_S
        )

    def summary(self) -> str:
        ms = [s * 1000 for s in self.latencies]
        return (
            f"{self.achieved:.1f} searches/s answered · p50 {statistics.median(ms):.1f} ms · "
            f"p99 {percentile(ms, 99):.1f} ms · max {max(ms):.1f} ms"
            + (f" · {len(self.errors)} errors" if self.errors else "")
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

    async def at(due: float, body: bytes, token: str) -> None:
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        status, raw = await pool.request("POST", "/v1/broadcasts", token, body)
        run.latencies.append(time.monotonic() - due)
        if status != 201:
            run.errors.append(f"{status} {raw[:200]!r}")
            return
        created = msgspec.json.decode(raw)
        run.notified.append(created["notifiedTransporters"])
        run.broadcasts.append(created["broadcastId"])

    await asyncio.gather(*(at(start + i / rate, b, t) for i, (b, t) in enumerate(work)))
    run.wall = time.monotonic() - start
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


async def _measure(d: Deployment, figures: Figures) -> None:
    rng = random.Random(11)
    await seed_vehicles(d.database_url, fleet(rng))
    wait_caught_up(d, "the fleet's events")
    meter = CpuMeter(d)
    with meter.measure():
        steady = await offer(d, STEADY_RATE, STEADY_SECONDS, rng)
    p99 = percentile(steady.latencies, 99)
    figures.latency(
        f"{STEADY_RATE} searches/s offered for {STEADY_SECONDS} s (open loop, from the scheduled "
        f"time); target p99 under {P99_TARGET_S * 1000:.0f} ms: {verdict(p99 < P99_TARGET_S)}",
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
    settle(d, figures, f"{STEADY_RATE}/s")
    if steady.errors:
        figures.add(f"answers other than 201 at {STEADY_RATE}/s", "; ".join(steady.errors[:3]))
    runs = [steady, *await _ladder(d, figures, rng)]
    check_stored(d.database_url, runs)


async def _ladder(d: Deployment, figures: Figures, rng: random.Random) -> list[Run]:
    runs: list[Run] = []
    best: Run | None = None
    for rate in LADDER:
        meter = CpuMeter(d)
        with meter.measure():
            run = await offer(d, rate, LADDER_SECONDS, rng)
        runs.append(run)
        wait_caught_up(d, f"the events of {rate}/s")
        outcome = "sustained" if run.sustained() else "**not sustained**"
        figures.add(
            f"{rate} searches/s offered for {LADDER_SECONDS} s", f"{run.summary()} ({outcome})"
        )
        if not run.sustained():
            figures.add(
                f"CPU per search at {rate}/s offered", meter.per_request(len(run.latencies))
            )
            break
        best = run
    figures.add(
        "**highest sustained rate**",
        f"{best.offered:.0f} searches/s offered ({best.summary()})" if best else "below 40/s",
    )
    return runs


def run() -> Figures:
    figures = Figures("search", "make bench SCENARIOS=search")
    with deployment() as d:
        uvloop.run(_measure(d, figures))
    figures.notes.append(
        "One gateway, broadcast, acceptance, timer and fan-out process (`weelo run`), "
        "PostgreSQL, Redis and the load generator share the machine. A rate is sustained when "
        f"at least {SUSTAINED_SHARE:.0%} of it is answered (201) and p99 stays under "
        f"{SUSTAINED_P99_S:.0f} s; the ladder stops at the first that is not. Every search is a "
        "new customer's `POST /v1/broadcasts`; broadcasts stay active (timeout 1 h), as they "
        "pile up in production between expiries. CPU and Redis commands are measured as in "
        "`accept-storm`; at a low rate each process's idle work (polling, relay) weighs more "
        "per search. The fan-out's share is the realtime projector's: a search sends "
        "`new_broadcast` to every notified transporter."
    )
    return figures
