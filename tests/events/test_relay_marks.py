"""The loss mark the relay sets with each new Redis epoch (libs/events/relay.py): a new
deployment's first epoch says it is the first, so that gateways started before it tell no
client to resync; an epoch after a wipe is a loss."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from libs.events.relay import OutboxRelay, RelayConfig
from libs.events.streams import bus_epoch_key, bus_losses_key, is_first_mark
from tests.events.helpers import eventually, running_relay


@pytest.fixture(scope="module")
def database_url(module_database: str) -> str:
    """A database no relay has led on: its lease's first holder gets token 1."""
    return module_database


@pytest.fixture
async def relay(
    pool: AsyncConnectionPool, database_url: str, redis: Redis, prefix: str
) -> AsyncIterator[OutboxRelay]:
    config = RelayConfig(poll_interval_s=0.05)
    async with running_relay(pool, database_url, redis, prefix, config) as running:
        yield running


async def _mark(redis: Redis, prefix: str) -> bytes | None:
    mark: bytes | None = await redis.get(bus_losses_key(prefix))
    return mark


async def test_the_first_epoch_is_marked_first_and_one_after_a_wipe_is_a_loss(
    redis: Redis, prefix: str, relay: OutboxRelay
) -> None:
    """The lease's first holder finds Redis empty: a first mark. Redis wiped under it: the
    epoch it starts then carries a plain mark, which every gateway takes for a loss."""
    await eventually(lambda: _has_mark(redis, prefix))
    first = await _mark(redis, prefix)
    assert first is not None and is_first_mark(first)
    await redis.delete(bus_epoch_key(prefix), bus_losses_key(prefix))
    await eventually(lambda: _has_mark(redis, prefix))
    after = await _mark(redis, prefix)
    assert after is not None and not is_first_mark(after)


async def _has_mark(redis: Redis, prefix: str) -> bool:
    return await _mark(redis, prefix) is not None
