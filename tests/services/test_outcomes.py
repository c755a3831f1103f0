"""A command id has one outcome (contract section 2): a retry of a command that took effect is
answered that outcome, alone or in a batch, and a lost reply is settled from PostgreSQL (real
broadcast and acceptance processes, real PostgreSQL and Redis)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from libs.events.client import CommandClient, CommandTimeout
from libs.events.commands import AcceptResult, AcceptSlots, BroadcastRef, commands_stream
from libs.events.outcomes import abandoner
from libs.events.trim import group_lag
from tests.events.helpers import eventually
from tests.processes import environment, services
from tests.services.helpers import command_client, fleet, new_broadcast, ok, search


@pytest.fixture(scope="module")
def env(service_env_module: dict[str, str]) -> dict[str, str]:
    return environment(service_env_module)


@pytest.fixture
def broadcast_service(env: dict[str, str]) -> Iterator[None]:
    with services(["broadcast"], env):
        yield


@pytest.fixture
async def client(
    redis_url: str, module_prefix: str, broadcast_service: None
) -> AsyncIterator[CommandClient]:
    async for c in command_client(redis_url, module_prefix):
        yield c


async def _slots_of(database_url: str, broadcast_id: str, transporter: str) -> int:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM assignments WHERE broadcast_id = %s AND transporter_id = %s",
            (broadcast_id, transporter),
        )
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def test_a_retry_of_a_claim_that_took_effect_answers_its_outcome(
    client: CommandClient, env: dict[str, str], database_url: str
) -> None:
    """Sending a winning claim again with its command id answers the first win (replayed), not
    `no_longer_available`, and claims nothing more."""
    (transporter,) = await fleet(client, 1)
    _customer, broadcast = await new_broadcast(client)
    claim = AcceptSlots(
        transporter_id=transporter, broadcast_id=broadcast, vehicle_type="open_17ft"
    )
    with services(["acceptance"], env):
        first = ok(await client.send(claim, command_id="claim-once"), AcceptResult)
        again = await client.send(claim, command_id="claim-once")
    assert again.failure is None, again.failure
    assert again.replayed and ok(again, AcceptResult) == first
    assert await _slots_of(database_url, broadcast, transporter) == 1


async def test_a_retry_read_in_a_batch_answers_its_outcome_and_the_others_are_decided(
    client: CommandClient, redis: Redis, module_prefix: str, env: dict[str, str], database_url: str
) -> None:
    """A winning claim queued again, after the broadcast filled, among a new claim that the
    acceptance service decides in one batch with it: the retry answers its first win, the new
    claim is `no_longer_available`, and nobody holds a second slot."""
    first, second, late = await fleet(client, 3)
    customer = f"c-{uuid.uuid4().hex[:8]}"
    broadcast = ok(await client.send(search(customer, quantity=2)), BroadcastRef).broadcast_id

    def claim(transporter: str) -> AcceptSlots:
        return AcceptSlots(
            transporter_id=transporter, broadcast_id=broadcast, vehicle_type="open_17ft"
        )

    with services(["acceptance"], env):
        won = ok(await client.send(claim(first), command_id="batched-once"), AcceptResult)
        ok(await client.send(claim(second)), AcceptResult)
    pending = [
        asyncio.create_task(client.send(claim(first), command_id="batched-once")),
        asyncio.create_task(client.send(claim(late))),
    ]
    queued = commands_stream(module_prefix, "acceptance")
    await eventually(lambda: _pending_in(redis, queued, len(pending)))
    with services(["acceptance"], env):
        again, refused = await asyncio.gather(*pending)
    assert again.failure is None, again.failure
    assert again.replayed and ok(again, AcceptResult) == won
    assert refused.failure is not None and refused.failure.code == "no_longer_available"
    assert await _slots_of(database_url, broadcast, first) == 1


async def test_a_claim_whose_reply_was_lost_is_answered_its_recorded_outcome(
    client: CommandClient,
    redis: Redis,
    module_prefix: str,
    env: dict[str, str],
    database_url: str,
) -> None:
    """A client that never hears the reply (its reply channel is down) settles the command in
    PostgreSQL when its wait ends: the claim took effect, so it answers the win, not 503."""
    (transporter,) = await fleet(client, 1)
    _customer, broadcast = await new_broadcast(client)
    async with AsyncConnectionPool(database_url, open=False, kwargs={"autocommit": True}) as pool:
        deaf = CommandClient(redis, module_prefix, "deaf", timeout_s=1.0, abandon=abandoner(pool))
        claim = AcceptSlots(
            transporter_id=transporter, broadcast_id=broadcast, vehicle_type="open_17ft"
        )
        with services(["acceptance"], env):
            reply = await deaf.send(claim)  # never started: nothing listens on its channel
    assert reply.failure is None and not reply.replayed  # its own attempt's outcome
    assert [a.truck_request_id for a in ok(reply, AcceptResult).assignments]
    assert await _slots_of(database_url, broadcast, transporter) == 1


async def _pending_in(redis: Redis, stream: str, entries: int) -> bool:
    """The stream holds at least `entries` entries after the last one read."""
    groups = await redis.xinfo_groups(stream)
    lags = [await group_lag(redis, stream, g) for g in groups]
    return bool(groups) and all((lag or 0) >= entries for lag in lags)


@contextlib.asynccontextmanager
async def _settling(
    redis: Redis, prefix: str, database_url: str
) -> AsyncIterator[tuple[CommandClient, AsyncConnectionPool[Any]]]:
    """A started client that settles unanswered or `unavailable` commands in PostgreSQL, and
    the pool it settles them on."""
    async with AsyncConnectionPool(database_url, open=False, kwargs={"autocommit": True}) as pool:
        client = CommandClient(redis, prefix, "settling", abandon=abandoner(pool))
        await client.start()
        try:
            yield client, pool
        finally:
            await client.close()


NO_TABLES = "-c search_path=nowhere"


def _without_tables(env: dict[str, str]) -> dict[str, str]:
    """`env` with a database URL whose sessions see no tables (an empty search_path): every
    statement the service runs fails, as when PostgreSQL is unreachable mid-command."""
    return {**env, "DATABASE_URL": make_conninfo(env["DATABASE_URL"], options=NO_TABLES)}


async def test_a_service_that_cannot_reach_postgresql_for_a_retry_does_not_deny_its_outcome(
    client: CommandClient, redis: Redis, module_prefix: str, env: dict[str, str], database_url: str
) -> None:
    """A keyed retry of a claim that took effect, run by a service whose PostgreSQL fails (it
    replies `unavailable`), is not answered 503 "nothing was changed": the client settles the
    command itself and answers the recorded win."""
    (transporter,) = await fleet(client, 1)
    _customer, broadcast = await new_broadcast(client)
    claim = AcceptSlots(
        transporter_id=transporter, broadcast_id=broadcast, vehicle_type="open_17ft"
    )
    async with _settling(redis, module_prefix, database_url) as (settling, _pool):
        with services(["acceptance"], env):
            won = ok(await settling.send(claim, command_id="retried-blind"), AcceptResult)
        with services(["acceptance"], _without_tables(env)):
            again = await settling.send(claim, command_id="retried-blind")
    assert again.failure is None, again.failure
    assert again.replayed and ok(again, AcceptResult) == won
    assert await _slots_of(database_url, broadcast, transporter) == 1


async def test_an_unavailable_reply_abandons_the_attempt_before_it_is_believed(
    client: CommandClient, redis: Redis, module_prefix: str, env: dict[str, str], database_url: str
) -> None:
    """A first claim that the service answers `unavailable` becomes a `CommandTimeout` (a true
    503) only after its attempt is marked abandoned in PostgreSQL, so no later delivery of it
    can take effect."""
    (transporter,) = await fleet(client, 1)
    _customer, broadcast = await new_broadcast(client)
    claim = AcceptSlots(
        transporter_id=transporter, broadcast_id=broadcast, vehicle_type="open_17ft"
    )
    async with _settling(redis, module_prefix, database_url) as (settling, pool):
        with services(["acceptance"], _without_tables(env)), pytest.raises(CommandTimeout):
            await settling.send(claim, command_id="refused-blind")
        async with pool.connection() as conn:
            cur = await conn.execute(
                "SELECT reply IS NULL, cardinality(abandoned) FROM command_results"
                " WHERE command_id = 'refused-blind'"
            )
            assert await cur.fetchone() == (True, 1)
    assert await _slots_of(database_url, broadcast, transporter) == 0
