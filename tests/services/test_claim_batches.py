"""Claims of one broadcast that the acceptance service reads in one batch are decided in one
transaction, each exactly as if it had run alone after the ones before it (real processes)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import psycopg
import pytest
from redis.asyncio import Redis

from libs.events.client import CommandClient
from libs.events.commands import AcceptResult, AcceptSlots, BroadcastRef, commands_stream
from tests.events.helpers import eventually
from tests.processes import environment, services
from tests.services.helpers import command_client, fleet, ok, search


@pytest.fixture
async def client(
    redis_url: str, service_env_module: dict[str, str], module_prefix: str
) -> AsyncIterator[CommandClient]:
    # The claims are queued before the acceptance service starts, and a process start takes
    # seconds on a busy machine (over 5 s at load 16, when the default deadline expired them
    # unexecuted): their deadline is not what this module tests.
    async for c in command_client(redis_url, module_prefix, timeout_s=60.0):
        yield c


async def test_claims_read_together_are_decided_together_as_if_one_by_one(
    client: CommandClient,
    redis: Redis,
    module_prefix: str,
    service_env_module: dict[str, str],
    database_url: str,
) -> None:
    """Six claims on three slots and one from a transporter not notified, all waiting when the
    acceptance service starts: three win in order (the third fills the broadcast), three are
    `no_longer_available` with none left, one is `not_notified`, and the winners' replies were
    recorded in one transaction."""
    env = environment(service_env_module)
    with services(["broadcast"], env):
        transporters = await fleet(client, 6)
        customer = f"c-{uuid.uuid4().hex[:8]}"
        broadcast = ok(await client.send(search(customer, quantity=3)), BroadcastRef).broadcast_id
        claims = [
            AcceptSlots(transporter_id=t, broadcast_id=broadcast, vehicle_type="open_17ft")
            for t in [*transporters, "t-never-notified"]
        ]
        pending = [asyncio.create_task(client.send(c)) for c in claims]
        queued = commands_stream(module_prefix, "acceptance")
        await eventually(lambda: _has(redis, queued, len(claims)))  # before anyone reads them
        with services(["acceptance"], env):
            replies = await asyncio.gather(*pending)
    won = [ok(r, AcceptResult) for r in replies if r.failure is None]
    assert [w.broadcast_state for w in won] == ["partially_filled"] * 2 + ["fully_filled"]
    refused = [(r.failure.code, r.failure.details) for r in replies if r.failure is not None]
    assert sorted(code for code, _ in refused) == ["no_longer_available"] * 3 + ["not_notified"]
    assert all(d == {"available": 0} for c, d in refused if c == "no_longer_available")
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(
            "SELECT count(DISTINCT recorded_at), count(*) FROM command_results"
            " WHERE command_id = ANY(%s)",
            ([r.command_id for r in replies if r.failure is None],),
        )
        assert await cur.fetchone() == (1, 3)
        cur = await conn.execute(
            "SELECT event_type FROM events WHERE stream_id = %s ORDER BY version",
            (f"broadcast-{broadcast}",),
        )
        kinds = [row[0] for row in await cur.fetchall()]
    assert kinds[-4:] == ["slots_accepted"] * 3 + ["broadcast_filled"]


async def _has(redis: Redis, stream: str, entries: int) -> bool:
    return int(await redis.xlen(stream)) >= entries
