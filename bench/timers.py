"""`timers`: 10,000 broadcasts expiring over one minute, fired by a real `weelo run timer`.

The broadcasts are written straight into the event store and read models (as the broadcast
service would), so the timer learns of them through the relay and its consumer group like in
production. Lateness is the expiry's commit time minus `expiresAt`. The second run kills the
timer (SIGKILL) for 2 s in the middle and measures how soon after the restart the overdue ones
fired.
"""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import redis as redis_sync
import uvloop

from bench.common import (
    ROOT,
    Figures,
    free_port,
    healthy,
    scratch_database,
    servers,
    service_env,
    wait_until,
    weelo,
)
from libs.events.catalogue import BroadcastCreated, BroadcastStarted, Location, TruckSlot
from libs.events.store import append
from libs.readmodel.broadcasts import insert_broadcast

COUNT = 10_000
SPREAD_S = 60.0
LEAD_S = 15.0
PLACE = Location(lat=12.97, lng=77.59)


async def seed(url: str, start: datetime) -> None:
    """COUNT active broadcasts whose expiries spread evenly over SPREAD_S from `start`."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for batch in range(0, COUNT, 200):
            async with conn.transaction():
                for i in range(batch, min(batch + 200, COUNT)):
                    await _one(conn, start + timedelta(seconds=SPREAD_S * i / COUNT))


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
    events = [created, BroadcastStarted(broadcast_id=bid, notified_transporters=("t-1",))]
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


def run() -> Figures:
    target = servers()
    figures = Figures("timers", "make bench SCENARIOS=timers")
    for outage in (False, True):
        prefix = f"bench-{uuid.uuid4().hex[:8]}:"
        with scratch_database(target.database_url) as url:
            env = service_env(url, target.redis_url, prefix, HEALTH_PORT=str(free_port()))
            late, after_restart = one_run(url, env, outage)
        redis_sync.Redis.from_url(target.redis_url).delete(
            *(redis_sync.Redis.from_url(target.redis_url).keys(prefix + "*") or [prefix])
        )
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
    figures.notes.append(
        "Lateness = the expiry transaction's time minus `expiresAt`. The timer "
        "process also runs the outbox relay; PostgreSQL and Redis share the machine."
    )
    return figures
