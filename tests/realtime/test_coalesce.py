"""The projector on a real Redis and PostgreSQL: when later claims of a broadcast are already in
the batch, its transporters get only the newest `broadcast_updated` (or the removal), while the
customer still gets every message of every claim."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from libs.events.catalogue import BroadcastFilled, DomainEvent, Envelope
from libs.events.codec import ENVELOPE_FIELD, encode
from libs.events.runner import Delivery
from libs.events.store import append
from libs.inbox.inbox import Inbox
from services.fanout.projector import Projector
from tests.realtime.test_units import CREATED, STARTED, accepted

Conn = psycopg.AsyncConnection[Any]


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[AsyncConnectionPool[Any]]:
    async with AsyncConnectionPool(database_url, min_size=1, max_size=2) as opened:
        yield opened


@pytest.fixture
def projector(pool: AsyncConnectionPool[Any], redis: Redis, prefix: str) -> Projector:
    return Projector(pool, Inbox(redis, prefix))


async def batch(conn: Conn, *events: DomainEvent, read_together_from: int) -> list[Delivery]:
    """The broadcast's events, stored (a new stream), as runner deliveries; those from index
    `read_together_from` on came in one batch, so each knows the ones after it
    (`Delivery.later`)."""
    return batch_of(await stored(conn, events), read_together_from)


async def stored(conn: Conn, events: Sequence[DomainEvent]) -> list[Envelope]:
    async with conn.transaction():
        return await append(conn, f"broadcast-{uuid.uuid4()}", 0, events)


def batch_of(stored: Sequence[Envelope], read_together_from: int) -> list[Delivery]:
    found = [
        Delivery("s", f"{i}-0", {ENVELOPE_FIELD: encode(e)}, 1)
        for i, e in enumerate(stored, start=1)
    ]
    for i in reversed(range(read_together_from, len(found) - 1)):
        found[i] = Delivery(
            "s", found[i].entry_id, found[i].fields, 1, (found[i + 1], *found[i + 1].later)
        )
    return found


async def project(projector: Projector, deliveries: Sequence[Delivery]) -> None:
    handle = projector.handler()
    for delivery in deliveries:
        await handle(delivery)


async def received(redis: Redis, prefix: str, user: str) -> list[tuple[str, dict[str, Any]]]:
    frames = await Inbox(redis, prefix).after(user, (0, 0), 100)
    return [(json.loads(f)["type"], json.loads(f)["data"]) for _, f in frames]


CLAIMS = (
    CREATED,
    STARTED,
    accepted("t1", ("r1", "a1", "open")),
    accepted("t2", ("r3", "a3", "closed")),
)


async def test_claims_read_one_by_one_each_update_the_transporters(
    projector: Projector, redis: Redis, prefix: str, conn: Conn
) -> None:
    """Each claim read on its own sends every notified transporter a `broadcast_updated`."""
    await project(projector, await batch(conn, *CLAIMS, read_together_from=len(CLAIMS)))
    assert [t for t, _ in await received(redis, prefix, "transporter:t2")] == [
        "new_broadcast",
        "broadcast_updated",
        "broadcast_updated",
    ]


async def test_claims_read_together_send_the_transporters_only_the_newest_update(
    projector: Projector, redis: Redis, prefix: str, conn: Conn
) -> None:
    """Two claims in one batch: each transporter gets one `broadcast_updated`, with the open
    slots after both; the customer gets both claims' messages."""
    await project(projector, await batch(conn, *CLAIMS, read_together_from=2))
    for transporter in ("transporter:t1", "transporter:t2"):
        assert await received(redis, prefix, transporter) == [
            ("new_broadcast", _offer()),
            ("broadcast_updated", {"broadcastId": "b1", "openByType": {"open": 1, "closed": 0}}),
        ]
    customer = [t for t, _ in await received(redis, prefix, "customer:c1")]
    assert customer.count("truck_accepted") == 2


async def test_a_fill_read_with_the_last_claims_sends_only_the_removal(
    projector: Projector, redis: Redis, prefix: str, conn: Conn
) -> None:
    """The last claims and the fill in one batch: the transporters get no update, only
    `broadcast_removed`."""
    events = (*CLAIMS, accepted("t1", ("r2", "a2", "open")), BroadcastFilled(broadcast_id="b1"))
    await project(projector, await batch(conn, *events, read_together_from=2))
    assert await received(redis, prefix, "transporter:t2") == [
        ("new_broadcast", _offer()),
        ("broadcast_removed", {"broadcastId": "b1", "reason": "fully_filled"}),
    ]


def _offer() -> dict[str, Any]:
    return {
        "broadcastId": "b1",
        "pickup": {"lat": 12.97, "lng": 77.59, "address": "MG Road"},
        "drop": {"lat": 12.97, "lng": 77.59, "address": "MG Road"},
        "openByType": {"open": 2, "closed": 1},
        "expiresAt": "2026-11-24T10:02:00.123Z",
    }


async def test_a_claim_run_again_alone_repeats_nothing_not_even_its_left_out_update(
    projector: Projector,
    pool: AsyncConnectionPool[Any],
    redis: Redis,
    prefix: str,
    conn: Conn,
) -> None:
    """A claim projected without its update (a later claim was in the batch) and then run again
    on its own (a redelivery to a new leader, its state read back from the event store): nobody
    gets anything again, not even the update it had left out, older than the one the
    transporters already have."""
    deliveries = await batch(conn, *CLAIMS, read_together_from=2)
    await project(projector, deliveries)
    await projector.projected.flush()  # as when its lease ends
    first_claim = deliveries[2]
    retry = Delivery(first_claim.stream, first_claim.entry_id, first_claim.fields, 2)
    new_leader = Projector(pool, Inbox(redis, prefix))  # nothing in memory: reads the store
    await project(new_leader, [retry, retry])
    customer = [t for t, _ in await received(redis, prefix, "customer:c1")]
    assert customer.count("truck_accepted") == 2
    transporter = [t for t, _ in await received(redis, prefix, "transporter:t1")]
    assert transporter == ["new_broadcast", "broadcast_updated"]
