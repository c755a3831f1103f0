"""`projector`: the capacity of the fan-out's projector, the one holder of its lease, in inbox
messages per second (issue 15, part 5: partition it if it is below 10x the soak's load).

One `weelo run gateway` on a scratch database (its outbox relay publishes) and, once the backlog
is on the streams, one `weelo run fanout`, which drains it alone: `BENCH_PROJECTOR_BROADCASTS`
(400) searches, each a `BroadcastCreated` and a `BroadcastStarted` to
`BENCH_PROJECTOR_RECIPIENTS` (758: the soak's mean of transporters notified per search)
transporters, appended to the event store as the broadcast service does (one stream per
broadcast, 50 broadcasts per transaction) before the fan-out starts. Each search is 2 + K
messages: the customer's state change twice and a `new_broadcast` to each transporter.

Capacity = the messages delivered / the time between the first and the last event's record in
`projected_events` (written once an event's messages are in their inboxes), so the fan-out's
start and lease are not counted. CPU: the fan-out process's and Redis's (`/proc`), per 1,000
messages, from the first record seen to the last. The soak's load, for the ratio: 20 searches/s,
each about 2 x 758 transporter messages (`new_broadcast`, then `broadcast_removed` or
`broadcast_updated` when its slot is taken) and a few for the customer and driver.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import redis as redis_sync

from bench.common import (
    ROOT,
    Figures,
    cpu_seconds,
    free_port,
    service_env,
    verdict,
    wait_until,
    weelo,
)
from bench.fanout import SECRET, Deployment, _stop_all, _wait_healthy, deployment
from libs.events.catalogue import BroadcastCreated, BroadcastStarted, Location, TruckSlot
from libs.events.store import append_many

BROADCASTS = int(os.environ.get("BENCH_PROJECTOR_BROADCASTS", "400"))
RECIPIENTS = int(os.environ.get("BENCH_PROJECTOR_RECIPIENTS", "758"))
PER_TRANSACTION = 50
SOAK_SEARCHES_PER_S = 20
SOAK_MESSAGES_PER_SEARCH = 2 * 758 + 6
SOAK_LOAD = SOAK_SEARCHES_PER_S * SOAK_MESSAGES_PER_SEARCH
HEADROOM = 10  # the bar: capacity at least 10x the soak's load


def _search(
    index: int, now: datetime
) -> tuple[str, int, list[BroadcastCreated | BroadcastStarted]]:
    broadcast = f"pb{index}-{uuid.uuid4().hex[:6]}"
    created = BroadcastCreated(
        broadcast_id=broadcast,
        customer_id=f"pc{index}",
        pickup=Location(lat=12.97, lng=77.59),
        drop=Location(lat=13.03, lng=77.64),
        truck_requests=(TruckSlot(truck_request_id=f"{broadcast}-1", vehicle_type="open_17ft"),),
        created_at=now,
        expires_at=now + timedelta(hours=1),
    )
    started = BroadcastStarted(
        broadcast_id=broadcast,
        notified_transporters=tuple(f"pt{(index * 7 + k) % 10_000}" for k in range(RECIPIENTS)),
    )
    return f"broadcast-{broadcast}", 0, [created, started]


async def _append_searches(database_url: str) -> None:
    now = datetime.now(UTC)
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        for start in range(0, BROADCASTS, PER_TRANSACTION):
            batch = [
                _search(i, now) for i in range(start, min(BROADCASTS, start + PER_TRANSACTION))
            ]
            await append_many(conn, batch)  # type: ignore[arg-type]
            await conn.commit()


def _outbox_empty(database_url: str) -> bool:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM outbox").fetchone()
    return row is not None and row[0] == 0


def _projected(conn: psycopg.Connection[tuple[object, ...]]) -> tuple[int, float]:
    """How many events have a record, and the seconds between the first and the last."""
    row = conn.execute(
        "SELECT count(*), extract(epoch FROM max(projected_at) - min(projected_at))"
        " FROM projected_events"
    ).fetchone()
    assert row is not None
    return int(str(row[0])), float(str(row[1] or 0.0))


def _until_projected(conn: psycopg.Connection[tuple[object, ...]], events: int) -> None:
    """Poll every 50 ms on one connection (a new one each time would cost the machine more CPU
    than the drain's own share), for at most 600 s."""
    deadline = time.monotonic() + 600
    while _projected(conn)[0] < events:
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {events} events projected within 600 s")
        time.sleep(0.05)


def _redis_pid(redis_url: str) -> int:
    info: dict[str, object] = redis_sync.Redis.from_url(redis_url).info("server")
    return int(str(info["process_id"]))


def _drain(d: Deployment, state_dir: str) -> tuple[float, float, float]:
    """Start the fan-out, wait until every event is projected: (span s, fan-out CPU s, Redis CPU
    s), the CPU from the first record seen to the last (sampled every 0.1 s or so)."""
    port = free_port()
    env = service_env(
        d.database_url,
        d.redis_url,
        d.prefix,
        JWT_SECRET=SECRET,
        JWT_REFRESH_SECRET=SECRET + "-refresh",
        WEELO_STATE_DIR=state_dir,
        HEALTH_PORT=str(port),
    )
    redis_pid = _redis_pid(d.redis_url)
    proc = subprocess.Popen(weelo("run", "fanout"), env=env, cwd=ROOT)
    try:
        _wait_healthy("fanout", proc, port)
        with psycopg.connect(d.database_url, autocommit=True) as conn:
            _until_projected(conn, 1)
            cpu_before, redis_before = cpu_seconds(proc.pid), cpu_seconds(redis_pid)
            _until_projected(conn, 2 * BROADCASTS)
            cpu = cpu_seconds(proc.pid) - cpu_before
            redis_cpu = cpu_seconds(redis_pid) - redis_before
            span = _projected(conn)[1]
    finally:
        _stop_all([proc])
    return span, cpu, redis_cpu


def run() -> Figures:
    figures = Figures("projector", "make bench SCENARIOS=projector")
    load_before = os.getloadavg()[0]
    with deployment(services=()) as d:
        started = time.monotonic()
        asyncio.run(_append_searches(d.database_url))
        wait_until(lambda: _outbox_empty(d.database_url), 300, "the relay")
        published_s = time.monotonic() - started
        with tempfile.TemporaryDirectory() as state_dir:
            span, cpu, redis_cpu = _drain(d, state_dir)
    messages = BROADCASTS * (2 + RECIPIENTS)
    capacity = messages * (2 * BROADCASTS - 1) / (2 * BROADCASTS) / max(span, 1e-9)
    load = f"load average {load_before:.2f} → {os.getloadavg()[0]:.2f}"
    figures.add(
        f"target: capacity at least {HEADROOM}x the soak's load ({SOAK_LOAD:,} messages/s)",
        f"{verdict(capacity >= HEADROOM * SOAK_LOAD)}: {capacity:,.0f} messages/s, "
        f"{capacity / SOAK_LOAD:.1f}x; {load}",
    )
    figures.add(
        "backlog drained by one projector",
        f"{messages:,} messages ({BROADCASTS:,} searches to {RECIPIENTS:,} transporters each) in "
        f"{span:.2f} s, {BROADCASTS * 2 / max(span, 1e-9):,.0f} events/s; appended and "
        f"published in {published_s:.1f} s beforehand; {load}",
    )
    figures.add(
        "CPU per 1,000 messages (from the first record seen to the last)",
        f"fan-out {cpu / messages * 1e6:.1f} ms · Redis {redis_cpu / messages * 1e6:.1f} ms "
        f"({cpu:.1f} s and {redis_cpu:.1f} s in all); {load}",
    )
    return figures
