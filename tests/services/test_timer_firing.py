"""The timer's firing path in process, against the real PostgreSQL and Redis: the claim script,
the rebuild's one query, batches that commit side by side, and the heap tended in gaps."""

from __future__ import annotations

import asyncio
import gc
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from prometheus_client import REGISTRY
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from libs.events.catalogue import BroadcastCreated, BroadcastStarted, Location, TruckSlot
from libs.events.clock import utc_now
from libs.events.store import append_many
from libs.readmodel.broadcasts import insert_broadcast
from services.timer.gaps import GapHeap, HeapInGaps
from services.timer.reconcile import rebuild
from services.timer.scheduler import Scheduler
from services.timer.store import TimerStore, due_ms

PLACE = Location(lat=12.97, lng=77.59)


async def seed(database_url: str, expiries: list[datetime]) -> list[str]:
    """One active broadcast per expiry, written as the broadcast service writes them."""
    created = [
        BroadcastCreated(
            broadcast_id=(bid := str(uuid.uuid4())),
            customer_id=f"c-{bid[:8]}",
            pickup=PLACE,
            drop=PLACE,
            truck_requests=(
                TruckSlot(truck_request_id=str(uuid.uuid4()), vehicle_type="open_17ft"),
            ),
            created_at=datetime.now(UTC),
            expires_at=at,
            request_hash=bid,
        )
        for at in expiries
    ]
    started = [
        BroadcastStarted(broadcast_id=c.broadcast_id, notified_transporters=("t-1",))
        for c in created
    ]
    connect = psycopg.AsyncConnection.connect
    async with await connect(database_url, autocommit=True) as conn, conn.transaction():
        await append_many(
            conn,
            [
                (f"broadcast-{c.broadcast_id}", 0, [c, s])
                for c, s in zip(created, started, strict=True)
            ],
        )
        for c in created:
            await insert_broadcast(conn, c, ["created", "broadcasting"], ["t-1"], version=2)
    return [c.broadcast_id for c in created]


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[AsyncConnectionPool[Any]]:
    """A pool as the services open theirs: connections in autocommit."""
    async with AsyncConnectionPool(
        database_url, min_size=1, max_size=6, open=False, kwargs={"autocommit": True}
    ) as p:
        yield p


async def expired_at(database_url: str, bid: str, timeout: float) -> datetime:
    """The wall clock just after the first read that shows `bid` expired (every 5 ms)."""
    deadline = asyncio.get_running_loop().time() + timeout
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        while asyncio.get_running_loop().time() < deadline:
            cur = await conn.execute("SELECT state FROM broadcasts WHERE broadcast_id = %s", (bid,))
            row = await cur.fetchone()
            if row and row[0] == "expired":
                return datetime.now(UTC)
            await asyncio.sleep(0.005)
    raise AssertionError(f"{bid} not expired within {timeout} s")


async def expiry_events(database_url: str, ids: list[str]) -> int:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM events WHERE event_type = 'broadcast_expired'"
            " AND stream_id = ANY(%s)",
            ([f"broadcast-{i}" for i in ids],),
        )
        row = await cur.fetchone()
        return int(row[0]) if row else 0


async def test_a_timer_due_while_an_earlier_batch_waits_on_a_row_lock_fires_on_time(
    database_url: str, redis: Redis, prefix: str, pool: AsyncConnectionPool[Any]
) -> None:
    """While the expiry of one broadcast waits 1.2 s on its row (another transaction holds
    it), a broadcast due 300 ms after it is expired within 150 ms of its expiresAt; then the
    first expires too, each with one expiry event."""
    now = datetime.now(UTC)
    blocked, later = await seed(
        database_url, [now + timedelta(seconds=1), now + timedelta(seconds=1.3)]
    )
    stop = asyncio.Event()
    scheduler = Scheduler(pool, TimerStore(redis, prefix), utc_now)
    running = asyncio.create_task(scheduler.run(stop))
    try:
        async with await psycopg.AsyncConnection.connect(database_url) as holder:
            await holder.execute(
                "SELECT 1 FROM broadcasts WHERE broadcast_id = %s FOR UPDATE", (blocked,)
            )
            seen = await expired_at(database_url, later, timeout=5)
            late = seen - (now + timedelta(seconds=1.3))
            await asyncio.sleep(
                max(0.0, (now + timedelta(seconds=2.2) - datetime.now(UTC)).total_seconds())
            )
            await holder.rollback()
        await expired_at(database_url, blocked, timeout=5)
    finally:
        stop.set()
        await running
    assert timedelta(0) <= late <= timedelta(milliseconds=150), late
    assert await expiry_events(database_url, [blocked, later]) == 2


async def test_a_claim_takes_lapsed_leases_first_never_more_than_the_limit_and_tells_the_next_due(
    redis: Redis, prefix: str
) -> None:
    """The claim script answers each timer with its due time and the earliest due time or lease
    end left; a lapsed lease is claimed again first (its due time: its last claim), within the
    limit."""
    store = TimerStore(redis, prefix)
    await store.mark_rebuilt()
    await store.schedule([("b1", 1000), ("b2", 2000), ("b3", 9000)])
    first = await store.claim_due(1500, 100, 10)
    assert (first.timers, first.next_due_ms) == ([("b1", 1000)], 1600)
    again = await store.claim_due(2500, 100, 1)
    assert (again.timers, again.next_due_ms) == ([("b1", 1500)], 2000)
    rest = await store.claim_due(2500, 100, 10)
    assert (rest.timers, rest.next_due_ms) == ([("b2", 2000)], 2600)
    await store.done_many(["b1", "b2"])
    assert (await store.claim_due(2500, 100, 10)).next_due_ms == 9000
    await store.forget(["b3"])
    assert (await store.claim_due(2500, 100, 10)).next_due_ms is None


async def test_a_rebuild_adds_what_redis_misses_and_forgets_what_ended_and_nothing_else(
    database_url: str, redis: Redis, prefix: str, pool: AsyncConnectionPool[Any]
) -> None:
    """A rebuild schedules an active broadcast Redis has no timer for, forgets a timer whose
    broadcast is unknown to PostgreSQL, keeps a timer already scheduled (and its due time), and
    marks the epoch; run again at once, it changes nothing."""
    later = datetime.now(UTC) + timedelta(hours=1)
    missing, held = await seed(database_url, [later, later])
    store = TimerStore(redis, prefix)
    await store.schedule([(held, 42), ("no-such-broadcast", 43)])
    added, forgotten = await rebuild(pool, store, 1.0)
    assert (added, forgotten) >= (1, 1)
    assert await redis.zscore(store.due, missing) == due_ms(later)
    assert await redis.zscore(store.due, held) == 42
    assert await redis.zscore(store.due, "no-such-broadcast") is None
    assert await redis.exists(store.epoch)
    assert await rebuild(pool, store, 1.0) == (0, 0)


def _full_collections() -> float:
    return REGISTRY.get_sample_value("weelo_full_collection_seconds_count") or 0.0


def test_the_heap_is_settled_only_in_a_gap_and_fully_collected_only_in_a_long_one() -> None:
    """With a settle due, a sleep ahead shorter than `settle_gap_s` leaves the heap as it is and
    a longer one freezes it; a due full collection waits for a gap of `full_gap_s` with no
    batch busy, unless it is overdue by `full_overdue_s`."""
    now = [100.0]
    config = GapHeap(settle_every_s=5, full_every_s=60, full_overdue_s=30)
    heap = HeapInGaps(config, clock=lambda: now[0])
    gc.unfreeze()
    try:
        assert not heap.tend(1.0, busy=False)  # nothing due yet
        now[0] += 5
        assert not heap.tend(config.settle_gap_s / 2, busy=False)
        assert gc.get_freeze_count() == 0
        assert heap.tend(config.settle_gap_s, busy=False)
        assert gc.get_freeze_count() > 0
        now[0] += 60
        fulls = _full_collections()
        assert heap.tend(config.full_gap_s, busy=True)  # a batch is busy: a settle only
        assert not heap.tend(config.full_gap_s / 2, busy=False)  # too short a gap
        assert _full_collections() == fulls
        assert heap.tend(config.full_gap_s, busy=False)
        assert _full_collections() == fulls + 1
        now[0] += 60 + 29
        assert not heap.tend(0.0, busy=True)  # due, no gap, not yet overdue
        now[0] += 1
        assert heap.tend(0.0, busy=True)  # overdue: collected anyway
        assert _full_collections() == fulls + 2
        assert not heap.tend(1.0, busy=False)  # and both are scheduled afresh
    finally:
        gc.unfreeze()
