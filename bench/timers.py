"""`timers`: 10,000 broadcasts expiring over one minute, fired by a real `weelo run timer`.

The broadcasts are written straight into the event store and read models (as the broadcast
service would), so the timer learns of them through the relay and its consumer group like in
production. Lateness is the expiry's commit time minus `expiresAt`. The second run kills the
timer (SIGKILL) for 2 s in the middle and measures how soon after the restart the overdue ones
fired. The third starts a timer with BACKLOG broadcasts already overdue (every timer was down
while they were due) and measures how soon after its start the last one expired.
"""

from __future__ import annotations

import functools
import os
import signal
import statistics
import subprocess
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psycopg
import redis as redis_sync
import uvloop

from bench.common import (
    ROOT,
    Figures,
    Servers,
    free_port,
    healthy,
    scratch_database,
    servers,
    service_env,
    verdict,
    wait_until,
    weelo,
)
from libs.events.catalogue import (
    BroadcastCreated,
    BroadcastStarted,
    DomainEvent,
    Location,
    TruckSlot,
)
from libs.events.store import append
from libs.readmodel.broadcasts import insert_broadcast

COUNT = 10_000
BACKLOG = 10_000
BACKLOG_RUNS = 3
SPREAD_S = 60.0
LEAD_S = 15.0
PLACE = Location(lat=12.97, lng=77.59)
T = TypeVar("T")


async def seed(url: str, start: datetime, count: int = COUNT, spread_s: float = SPREAD_S) -> None:
    """`count` active broadcasts whose expiries spread evenly over `spread_s` from `start`."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for batch in range(0, count, 200):
            async with conn.transaction():
                for i in range(batch, min(batch + 200, count)):
                    await _one(conn, start + timedelta(seconds=spread_s * i / count))


async def _one(conn: psycopg.AsyncConnection[Any], expires_at: datetime) -> None:
    bid = str(uuid.uuid4())
    created = BroadcastCreated(
        broadcast_id=bid,
        customer_id=f"c-{bid[:8]}",
        pickup=PLACE,
        drop=PLACE,
        truck_requests=(TruckSlot(truck_request_id=str(uuid.uuid4()), vehicle_type="open_17ft"),),
        created_at=datetime.now(UTC),
        expires_at=expires_at,
        request_hash=bid,
    )
    events: list[DomainEvent] = [
        created,
        BroadcastStarted(broadcast_id=bid, notified_transporters=("t-1",)),
    ]
    await append(conn, f"broadcast-{bid}", 0, events)
    await insert_broadcast(conn, created, ["created", "broadcasting"], ["t-1"], version=2)


def lateness(url: str) -> list[tuple[datetime, float]]:
    """(expiresAt, seconds late) of every expired broadcast."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT expires_at, extract(epoch FROM state_changed_at - expires_at) FROM broadcasts"
            " WHERE state = 'expired'"
        ).fetchall()
    return [(r[0], float(r[1])) for r in rows]


def wait_all_expired(url: str, deadline: float) -> None:
    with psycopg.connect(url) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM broadcasts WHERE state <> 'expired'"
            ).fetchone()
            if row and row[0] == 0:
                return
            time.sleep(0.5)
    raise TimeoutError("not every broadcast expired")


def start_timer(env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start a timer process and return once its /health answers 200."""
    proc = subprocess.Popen(weelo("run", "timer"), env=env, cwd=ROOT)
    wait_until(lambda: healthy(int(env["HEALTH_PORT"])), 30, "timer health")
    return proc


def one_run(url: str, env: dict[str, str], outage: bool) -> tuple[list[float], float | None]:
    """Lateness of every expiry; with `outage`, also the last firing's delay after the restart."""
    start = datetime.now(UTC) + timedelta(seconds=LEAD_S)
    timer = start_timer(env)
    uvloop.run(seed(url, start))
    restarted: datetime | None = None
    if outage:
        middle = (start + timedelta(seconds=SPREAD_S / 2) - datetime.now(UTC)).total_seconds()
        time.sleep(max(0.0, middle))
        timer.send_signal(signal.SIGKILL)
        timer.wait()
        time.sleep(2.0)
        timer, restarted = start_timer(env), datetime.now(UTC)
    try:
        wait_all_expired(url, time.monotonic() + LEAD_S + SPREAD_S + 60)
    finally:
        timer.terminate()
        timer.wait(30)
    rows = lateness(url)
    if restarted is None:
        return [late for _, late in rows], None
    overdue = [e + timedelta(seconds=late) for e, late in rows if e < restarted]
    after = max((t - restarted).total_seconds() for t in overdue)
    return [late for e, late in rows if e >= restarted + timedelta(seconds=2)], after


def last_expiry(url: str) -> datetime:
    """When the last expiry event was recorded."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT max(recorded_at) FROM events WHERE event_type = 'broadcast_expired'"
        ).fetchone()
    assert row is not None and row[0] is not None
    return row[0]  # type: ignore[no-any-return]


def backlog_run(url: str, env: dict[str, str]) -> tuple[float, float]:
    """BACKLOG broadcasts overdue when a timer starts: seconds from its spawn and from its
    /health answering until the last of them expired."""
    uvloop.run(seed(url, datetime.now(UTC) - timedelta(seconds=5), BACKLOG, 1.0))
    spawned = datetime.now(UTC)
    timer = start_timer(env)
    up = datetime.now(UTC)
    try:
        wait_all_expired(url, time.monotonic() + 120)
    finally:
        timer.terminate()
        timer.wait(30)
    last = last_expiry(url)
    return (last - spawned).total_seconds(), (last - up).total_seconds()


def _forget(redis_url: str, prefix: str) -> None:
    client = redis_sync.Redis.from_url(redis_url)
    client.delete(*(client.keys(prefix + "*") or [prefix]))


def _fresh(target: Servers, run: Callable[[str, dict[str, str]], T]) -> T:
    """`run(database url, service env)` on a scratch database and Redis key prefix."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    try:
        with scratch_database(target.database_url) as url:
            return run(
                url, service_env(url, target.redis_url, prefix, HEALTH_PORT=str(free_port()))
            )
    finally:
        _forget(target.redis_url, prefix)


def add_backlog(figures: Figures, target: Servers) -> None:
    """BACKLOG_RUNS runs of `backlog_run`; the verdict on their median (contract: 1 s)."""
    loads = [os.getloadavg()[0]]
    runs = []
    for _ in range(BACKLOG_RUNS):
        runs.append(_fresh(target, backlog_run))
        loads.append(os.getloadavg()[0])
    spawn_ms = statistics.median(r[0] for r in runs) * 1000
    up_ms = statistics.median(r[1] for r in runs) * 1000
    figures.add(
        f"overdue backlog {BACKLOG:,}: last expired, after the timer's start",
        f"{up_ms:.0f} ms after the timer's /health answered, {spawn_ms:.0f} ms after its process"
        f" was spawned (median of {BACKLOG_RUNS}: "
        + ", ".join(f"{r[1] * 1000:.0f}" for r in runs)
        + f" ms after /health); ≤ 1 s {verdict(up_ms <= 1000)}; load average (1 min) "
        + " → ".join(f"{load:.2f}" for load in loads),
    )


def run() -> Figures:
    target = servers()
    figures = Figures("timers", "make bench SCENARIOS=timers")
    for outage in (False, True):
        late, after_restart = _fresh(target, functools.partial(one_run, outage=outage))
        label = "with the timer killed for 2 s mid-run" if outage else "timer running throughout"
        figures.latency(
            f"firing lateness, {COUNT:,} expiries over {SPREAD_S:.0f} s, {label}"
            + (" (expiries due after the restart)" if outage else ""),
            late,
        )
        if after_restart is not None:
            figures.add(
                "every overdue expiry fired within, after the restart",
                f"{after_restart * 1000:.0f} ms after the restarted timer's /health answered",
            )
    add_backlog(figures, target)
    figures.notes.append(
        "Lateness = the expiry transaction's time minus `expiresAt`. The timer "
        "process also runs the outbox relay; PostgreSQL and Redis share the machine. "
        f"The overdue backlog: {BACKLOG:,} broadcasts written past their `expiresAt` while no "
        "timer ran, then one timer started; it relays their events itself too (no other "
        "service runs). The load average is the machine's, before and after each run."
    )
    return figures
