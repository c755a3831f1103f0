"""Faults, one every few seconds, chosen by a seeded random source; each is logged with its
start and end. Faults may overlap (a kill during another process's freeze); two faults of the
same resource (Redis, a PostgreSQL table lock) wait for each other, and a process under a fault
is not chosen again until it is back."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import psycopg
import redis

from chaos.cluster import Cluster, Slot
from chaos.records import FaultRecord, RunLog
from chaos.redis_server import PrivateRedis

RESTART_AFTER_S = 2.0
FREEZE_S = 15.0
LOCK_S = 8.0
TAIL_LOSS_AFTER_S = 3.0
REDIS_DOWN_S = 3.0
LOCKED_TABLES = ("broadcasts", "truck_requests", "assignments")
HARNESS_APP = "chaos-harness"


@dataclass
class FaultContext:
    cluster: Cluster
    redis: PrivateRedis
    database_url: str
    log: RunLog
    rng: random.Random
    locks: dict[str, asyncio.Lock] = field(
        default_factory=lambda: {"redis": asyncio.Lock(), "pg": asyncio.Lock()}
    )


Fault = Callable[[FaultContext, FaultRecord, float], Awaitable[None]]


def _pick_process(ctx: FaultContext, pick: float) -> Slot | None:
    free = [s for s in ctx.cluster.slots if not s.busy]
    return free[int(pick * len(free))] if free else None


async def kill(ctx: FaultContext, record: FaultRecord, pick: float) -> None:
    """SIGKILL a random process; start it again 2 s later, on the same port."""
    slot = _pick_process(ctx, pick)
    if slot is None:
        record.ok, record.detail = False, "no process free"
        return
    slot.busy = True
    try:
        record.target, record.detail = slot.name, f"pid {slot.pid}"
        ctx.cluster.kill(slot)
        await asyncio.sleep(RESTART_AFTER_S)
        slot.spawn(ctx.log)
        record.ok = await ctx.cluster.wait_healthy(slot)
        record.detail += f", restarted as pid {slot.pid}"
    finally:
        slot.busy = False


async def freeze(ctx: FaultContext, record: FaultRecord, pick: float) -> None:
    """SIGSTOP a random process for 15 s, then SIGCONT."""
    slot = _pick_process(ctx, pick)
    if slot is None:
        record.ok, record.detail = False, "no process free"
        return
    slot.busy = True
    try:
        record.target, record.detail = slot.name, f"pid {slot.pid}"
        ctx.cluster.signal(slot, signal.SIGSTOP)
        await asyncio.sleep(FREEZE_S)
    finally:
        ctx.cluster.signal(slot, signal.SIGCONT)
        slot.busy = False


async def redis_wipe(ctx: FaultContext, record: FaultRecord, _pick: float) -> None:
    """FLUSHALL on the private Redis: every key gone at once."""
    record.target = "redis"
    async with ctx.locks["redis"]:
        record.start = time.time()
        await asyncio.to_thread(_flushall, ctx.redis)


def _flushall(server: PrivateRedis) -> None:
    with server.client(10.0) as c:
        c.flushall()


async def redis_tail_loss(ctx: FaultContext, record: FaultRecord, _pick: float) -> None:
    """Snapshot, keep running 3 s, restart from the snapshot: Redis loses its newest writes."""
    record.target = "redis"
    async with ctx.locks["redis"]:
        record.start = time.time()
        kept = await asyncio.to_thread(ctx.redis.snapshot)
        await asyncio.sleep(TAIL_LOSS_AFTER_S)
        record.down_from = time.time()
        await asyncio.to_thread(ctx.redis.restart_from, kept)


async def redis_restart(ctx: FaultContext, record: FaultRecord, _pick: float) -> None:
    """Shut Redis down (saving everything first), wait 3 s, start it with the same data."""
    record.target = "redis"
    async with ctx.locks["redis"]:
        record.start = time.time()
        await asyncio.to_thread(ctx.redis.stop, save=True)
        await asyncio.sleep(REDIS_DOWN_S)
        await asyncio.to_thread(ctx.redis.start)


async def pg_lock(ctx: FaultContext, record: FaultRecord, pick: float) -> None:
    """Hold an ACCESS EXCLUSIVE lock on one of the booking tables for 8 s."""
    table = LOCKED_TABLES[int(pick * len(LOCKED_TABLES))]
    record.target = table
    async with ctx.locks["pg"]:
        conn = await psycopg.AsyncConnection.connect(ctx.database_url, application_name=HARNESS_APP)
        try:
            async with conn.transaction():
                await conn.execute("SET LOCAL lock_timeout = '3s'")
                await conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
                record.start = time.time()
                await asyncio.sleep(LOCK_S)
        except psycopg.Error as e:
            record.ok, record.detail = False, f"lock not taken: {type(e).__name__}"
        finally:
            await conn.close()


async def pg_terminate(ctx: FaultContext, record: FaultRecord, _pick: float) -> None:
    """pg_terminate_backend of every service connection to the scratch database (never the
    harness's own, never another database's)."""
    record.target = "postgres"
    async with await psycopg.AsyncConnection.connect(
        ctx.database_url, application_name=HARNESS_APP, autocommit=True
    ) as conn:
        cur = await conn.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND application_name <> %s AND backend_type = 'client backend'",
            (HARNESS_APP,),
        )
        row = await cur.fetchone()
        record.detail = f"{row[0] if row else 0} backends terminated"


FAULTS: dict[str, Fault] = {
    "kill": kill,
    "freeze": freeze,
    "redis_wipe": redis_wipe,
    "redis_tail_loss": redis_tail_loss,
    "redis_restart": redis_restart,
    "pg_lock": pg_lock,
    "pg_terminate": pg_terminate,
}


async def run_fault(ctx: FaultContext, kind: str, pick: float) -> None:
    """One fault; `pick` (drawn when it was scheduled, so the schedule's draws do not depend on
    how faults interleave) chooses its target."""
    record = FaultRecord(id=ctx.log.next_id(), kind=kind, target="", start=time.time())
    ctx.log.faults.append(record)
    try:
        await FAULTS[kind](ctx, record, pick)
    except (OSError, psycopg.Error, redis.RedisError, RuntimeError) as e:
        record.ok, record.detail = False, f"{record.detail} failed: {e!r}"
    finally:
        record.end = time.time()


async def inject(
    ctx: FaultContext, kinds: tuple[str, ...], interval_s: float, until: float
) -> None:
    """A fault every `interval_s` (jittered) until `until`, each kind once per round of
    `len(kinds)` faults in a random order; returns once every fault ended."""
    running: list[asyncio.Task[None]] = []
    bag: list[str] = []
    with contextlib.suppress(asyncio.CancelledError):
        while True:
            await asyncio.sleep(ctx.rng.uniform(0.5, 1.5) * interval_s)
            if time.time() >= until:
                break
            if not bag:  # every kind once per round, in a random order
                bag = ctx.rng.sample(kinds, len(kinds))
            kind, pick = bag.pop(), ctx.rng.random()
            running.append(asyncio.create_task(run_fault(ctx, kind, pick)))
    await asyncio.gather(*running)
