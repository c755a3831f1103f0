"""The projector's durable record of what it delivered, on a real Redis and PostgreSQL: an event
the relay republishes after Redis lost its data (the inboxes and their delivery marks with it)
is not delivered again, by the same projector or by a new leader; an event that was not
delivered before the loss is delivered once; a delivery that failed is not taken as done."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from libs.events.catalogue import Envelope
from libs.events.codec import ENVELOPE_FIELD, encode
from libs.events.runner import Delivery
from libs.events.store import append
from libs.inbox.inbox import Inbox
from services.fanout.projected import RecordNotWritten
from services.fanout.projector import Projector
from tests.events.helpers import eventually
from tests.realtime.test_units import CREATED, STARTED, accepted

STORY = (CREATED, STARTED, accepted("t1", ("r1", "a1", "open")))


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[AsyncConnectionPool[Any]]:
    async with AsyncConnectionPool(
        database_url, min_size=1, max_size=2, kwargs={"autocommit": True}
    ) as opened:
        yield opened


async def stored(conn: psycopg.AsyncConnection[Any]) -> list[Envelope]:
    async with conn.transaction():
        return await append(conn, f"broadcast-{uuid.uuid4()}", 0, STORY)


async def project(projector: Projector, envelopes: Sequence[Envelope]) -> None:
    """Each event as the runner hands it over, read on its own."""
    handle = projector.handler()
    for n, envelope in enumerate(envelopes, start=1):
        await handle(Delivery("s", f"{n}-0", {ENVELOPE_FIELD: encode(envelope)}, 1))


async def lose_everything(redis: Redis, prefix: str) -> None:
    """What a Redis restart without persistence does to the deployment's keys."""
    keys = [k async for k in redis.scan_iter(match=f"{prefix}*")]
    if keys:
        await redis.delete(*keys)


async def received(redis: Redis, prefix: str, user: str) -> list[str]:
    frames = await Inbox(redis, prefix).after(user, (0, 0), 100)
    return [json.loads(f)["data"].get("state", json.loads(f)["type"]) for _, f in frames]


async def test_events_delivered_before_redis_lost_its_data_are_not_delivered_again(
    pool: AsyncConnectionPool[Any], redis: Redis, prefix: str, conn: psycopg.AsyncConnection[Any]
) -> None:
    """Two events delivered, then every key lost and all three events republished to a new
    leader: only the third one's messages arrive, once; after a second loss, none again."""
    events = await stored(conn)
    leader = Projector(pool, Inbox(redis, prefix))
    await project(leader, events[:2])
    await leader.projected.flush()  # as when its lease ends
    assert await received(redis, prefix, "customer:c1") == ["created", "broadcasting"]
    await lose_everything(redis, prefix)
    new_leader = Projector(pool, Inbox(redis, prefix))
    await project(new_leader, events)
    await project(new_leader, events[2:])
    assert await received(redis, prefix, "customer:c1") == ["truck_accepted", "partially_filled"]
    assert await received(redis, prefix, "transporter:t2") == ["broadcast_updated"]
    await lose_everything(redis, prefix)
    await project(new_leader, events)
    assert await received(redis, prefix, "customer:c1") == []


async def test_an_event_that_reaches_the_projector_after_a_later_position_is_delivered(
    pool: AsyncConnectionPool[Any], redis: Redis, prefix: str, conn: psycopg.AsyncConnection[Any]
) -> None:
    """Events committed out of position order: one stream's creation, projected after a later
    position of another stream was, is delivered all the same (once), by this leader and by a
    new one after a loss."""
    early, late = await stored(conn), await stored(conn)
    assert early[0].position < late[0].position
    leader = Projector(pool, Inbox(redis, prefix))
    await project(leader, late[:1])
    await project(leader, early[:1])
    await project(leader, early[:1])
    await leader.projected.flush()
    assert await received(redis, prefix, "customer:c1") == ["created", "created"]
    await lose_everything(redis, prefix)
    await project(Projector(pool, Inbox(redis, prefix)), [late[0], early[0], early[1]])
    assert await received(redis, prefix, "customer:c1") == ["broadcasting"]


async def test_an_event_replayed_from_the_dead_letter_stream_is_delivered(
    pool: AsyncConnectionPool[Any], redis: Redis, prefix: str, conn: psycopg.AsyncConnection[Any]
) -> None:
    """An event never delivered (it went to the dead-letter stream) while a later event of its
    broadcast was, then replayed by an operator: its messages arrive, once."""
    created, started, claim = await stored(conn)
    leader = Projector(pool, Inbox(redis, prefix))
    await project(leader, [created, claim])
    await project(leader, [started, started])
    assert await received(redis, prefix, "customer:c1") == [
        "created",
        "truck_accepted",
        "partially_filled",
        "broadcasting",
    ]


async def test_a_delivered_event_is_recorded_soon_after_while_the_lease_goes_on(
    pool: AsyncConnectionPool[Any], redis: Redis, prefix: str, conn: psycopg.AsyncConnection[Any]
) -> None:
    """The record of a delivered event reaches `projected_events` by itself, within a second."""
    events = await stored(conn)
    await project(Projector(pool, Inbox(redis, prefix)), events[:1])

    async def recorded() -> bool:
        cur = await conn.execute(
            "SELECT 1 FROM projected_events WHERE position = %s", (events[0].position,)
        )
        return await cur.fetchone() is not None

    await eventually(recorded, timeout=1.0)


async def test_a_delivery_that_failed_is_delivered_when_run_again(
    pool: AsyncConnectionPool[Any], redis: Redis, prefix: str, conn: psycopg.AsyncConnection[Any]
) -> None:
    """A projection whose inbox write failed (Redis unreachable) is not recorded as delivered:
    run again with Redis back, its messages arrive once."""
    events = await stored(conn)
    unreachable = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    with pytest.raises(RedisConnectionError):
        await project(Projector(pool, Inbox(unreachable, prefix)), events[:1])
    await unreachable.aclose()
    await project(Projector(pool, Inbox(redis, prefix)), events[:1])
    assert await received(redis, prefix, "customer:c1") == ["created"]


async def test_a_record_whose_write_failed_is_written_once_postgresql_takes_it(
    database_url: str, redis: Redis, prefix: str, conn: psycopg.AsyncConnection[Any]
) -> None:
    """While `projected_events` is locked (past the pool's lock timeout) the record of a
    delivered event cannot be written; it is kept and written once the lock is gone, so a later
    holder does not deliver the event again after a Redis loss."""
    events = await stored(conn)
    kwargs = {"autocommit": True, "options": "-c lock_timeout=100"}
    async with (
        AsyncConnectionPool(database_url, min_size=1, max_size=2, kwargs=kwargs) as pool,
        await psycopg.AsyncConnection.connect(database_url) as locker,
    ):
        holder = Projector(pool, Inbox(redis, prefix))
        assert not await holder.projected.delivered(events[0])  # looked up before the fault
        await locker.execute("LOCK TABLE projected_events IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(RecordNotWritten):  # its writes were refused for RECORD_WAIT_S
            await project(holder, events[:1])
        await locker.rollback()

        async def recorded() -> bool:
            cur = await conn.execute(
                "SELECT 1 FROM projected_events WHERE position = %s", (events[0].position,)
            )
            return await cur.fetchone() is not None

        await eventually(recorded, timeout=3.0)


async def test_an_event_whose_record_was_not_written_is_not_acknowledged_and_reaches_users_once(
    database_url: str, redis: Redis, prefix: str, conn: psycopg.AsyncConnection[Any]
) -> None:
    """While `projected_events` refuses writes, an event delivered to its inboxes is not
    acknowledged (`RecordNotWritten`): its holder then dies (its pool gone, the record with it)
    and a successor runs the event again. Its messages arrive once, and after Redis loses its
    data, once more events are republished, the event is not delivered a second time."""
    events = await stored(conn)
    kwargs = {"autocommit": True, "options": "-c lock_timeout=100"}
    async with await psycopg.AsyncConnection.connect(database_url) as locker:
        doomed = AsyncConnectionPool(
            database_url, min_size=1, max_size=1, kwargs=kwargs, open=False
        )
        await doomed.open()
        holder = Projector(doomed, Inbox(redis, prefix))
        assert not await holder.projected.delivered(events[0])  # looked up before the fault
        await locker.execute("LOCK TABLE projected_events IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(RecordNotWritten):
            await project(holder, events[:1])
        await doomed.close()  # killed: what it kept in memory is gone
        await locker.rollback()
    async with AsyncConnectionPool(database_url, min_size=1, max_size=2, kwargs=kwargs) as pool:
        successor = Projector(pool, Inbox(redis, prefix))
        await project(successor, events[:1])  # the runner hands the unacknowledged entry over
        assert await received(redis, prefix, "customer:c1") == ["created"]
        await lose_everything(redis, prefix)
        await project(successor, events[:2])
        assert await received(redis, prefix, "customer:c1") == ["broadcasting"]


async def test_an_event_postgresql_cannot_look_up_is_not_delivered_again_after_a_redis_loss(
    database_url: str, redis: Redis, prefix: str, conn: psycopg.AsyncConnection[Any]
) -> None:
    """After Redis lost its data (the marks with it), a holder whose lookups PostgreSQL refuses
    fails a republished event that was delivered before, rather than taking it as new; once
    PostgreSQL answers, the event is skipped: its messages arrived once."""
    events = await stored(conn)
    kwargs = {"autocommit": True, "options": "-c lock_timeout=100"}
    async with AsyncConnectionPool(database_url, min_size=1, max_size=2, kwargs=kwargs) as pool:
        await project(Projector(pool, Inbox(redis, prefix)), events[:1])
        await lose_everything(redis, prefix)
        successor = Projector(pool, Inbox(redis, prefix))
        async with await psycopg.AsyncConnection.connect(database_url) as locker:
            await locker.execute("LOCK TABLE projected_events IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(psycopg.errors.LockNotAvailable):
                await project(successor, events[:1])
            await locker.rollback()
        await project(successor, events[:1])
    assert await received(redis, prefix, "customer:c1") == []
