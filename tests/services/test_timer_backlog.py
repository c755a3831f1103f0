"""A backlog of overdue broadcasts (every timer instance was down while they were due) meets
timers that start side by side: each broadcast ends expired exactly once (CONTRACT.md section 8),
however many batches of the firing loop the backlog takes."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from libs.events.catalogue import BroadcastCreated, BroadcastStarted, Location, TruckSlot
from libs.events.store import Batch, append_many
from libs.readmodel.broadcasts import insert_broadcast
from services.timer.active import ActiveBroadcasts
from services.timer.scheduler import SchedulerConfig
from tests.events.helpers import eventually
from tests.processes import environment, services

BACKLOG = SchedulerConfig().batch * 5 // 2  # two and a half batches
PLACE = Location(lat=12.97, lng=77.59)


def _created(expires_at: datetime) -> BroadcastCreated:
    bid = str(uuid.uuid4())
    slots = tuple(
        TruckSlot(truck_request_id=str(uuid.uuid4()), vehicle_type="open_17ft") for _ in range(2)
    )
    return BroadcastCreated(
        broadcast_id=bid,
        customer_id=f"c-{bid[:8]}",
        pickup=PLACE,
        drop=PLACE,
        truck_requests=slots,
        created_at=expires_at - timedelta(seconds=60),
        expires_at=expires_at,
        request_hash=bid,
    )


def _events(created: BroadcastCreated) -> Batch:
    started = BroadcastStarted(broadcast_id=created.broadcast_id, notified_transporters=("t-1",))
    return (f"broadcast-{created.broadcast_id}", 0, [created, started])


async def seed_overdue(database_url: str, count: int) -> list[str]:
    """`count` active broadcasts already past their expiry, written as the broadcast service
    writes them (events and read models, 500 a transaction); their ids."""
    due = datetime.now(UTC) - timedelta(seconds=2)
    created = [_created(due) for _ in range(count)]
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        for start in range(0, count, 500):
            batch = created[start : start + 500]
            async with conn.transaction():
                await append_many(conn, [_events(c) for c in batch])
                async with conn.pipeline():
                    for c in batch:
                        states = ["created", "broadcasting"]
                        await insert_broadcast(conn, c, states, ["t-1"], version=2)
    return [c.broadcast_id for c in created]


async def _endings(database_url: str, ids: list[str]) -> dict[str, tuple[str, str, int, int]]:
    """(state, end reason, version, expiry events) of each broadcast, and each open slot left."""
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(
            "SELECT b.broadcast_id, b.state, coalesce(b.end_reason, ''), b.version,"
            " (SELECT count(*) FROM events e WHERE e.stream_id = 'broadcast-' || b.broadcast_id"
            "  AND e.event_type = 'broadcast_expired')::int"
            " FROM broadcasts b WHERE b.broadcast_id = ANY(%s)",
            (ids,),
        )
        return {r[0]: (r[1], r[2], r[3], r[4]) for r in await cur.fetchall()}


async def _slots_left_open(database_url: str, ids: list[str]) -> int:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM truck_requests WHERE broadcast_id = ANY(%s) AND state = 'open'",
            (ids,),
        )
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])


async def _timers_left(redis_url: str, prefix: str) -> int:
    redis = Redis.from_url(redis_url)
    try:
        base = f"{prefix}{{timers}}:"
        return int(await redis.zcard(base + "due")) + int(await redis.zcard(base + "inflight"))
    finally:
        await redis.aclose()


async def test_a_backlog_of_many_batches_expires_each_broadcast_exactly_once(
    service_env_module: dict[str, str], database_url: str, redis_url: str, module_prefix: str
) -> None:
    """Two timers starting on 2.5 batches of overdue broadcasts end every one expired / timeout
    with exactly one expiry event and no open slot, and release every timer."""
    ids = await seed_overdue(database_url, BACKLOG)
    env = environment(service_env_module)
    with services(["timer", "timer"], env):

        async def all_ended() -> bool:
            endings = await _endings(database_url, ids)
            return all(state == "expired" for state, *_ in endings.values())

        await eventually(all_ended, timeout=60, every=0.2)
        endings = await _endings(database_url, ids)
        assert set(endings.values()) == {("expired", "timeout", 3, 1)}
        assert await _slots_left_open(database_url, ids) == 0

        async def released() -> bool:
            return await _timers_left(redis_url, module_prefix) == 0

        await eventually(released, timeout=10, every=0.1)


async def test_questions_asked_together_get_each_its_own_answer(database_url: str) -> None:
    """Many `ActiveBroadcasts` questions at once (one query) answer each broadcast: active ones
    True, an ended one and an unknown id False."""
    active = await seed_overdue(database_url, 20)
    async with AsyncConnectionPool(database_url, min_size=1, max_size=2, open=False) as pool:
        async with pool.connection() as conn:
            await conn.execute(
                "UPDATE broadcasts SET state = 'cancelled' WHERE broadcast_id = %s", (active[0],)
            )
            await conn.commit()
        ask = ActiveBroadcasts(pool)
        asked = [*active, "no-such-broadcast"]
        answers = await asyncio.gather(*(ask(bid) for bid in asked))
    assert answers == [False, *([True] * 19), False]
