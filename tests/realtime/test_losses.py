"""When a gateway tells its sockets to resync (services/gateway/realtime/losses.py), watched on
the real Redis: a changed loss mark resyncs them; the mark found at the first read, or a missing
one (a wipe the relay has not noticed yet), does not; a mark that appears where the watcher saw
none does, unless it is a deployment's first; a watcher that cannot read says so."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis
from structlog.testing import capture_logs

from libs.events.streams import first_mark
from services.gateway.realtime.losses import watch_losses
from tests.processes import free_port

EVERY_S = 0.01


class CountingRedis(Redis):
    """The real client, counting the watcher's reads so a test can wait for the next one."""

    reads = 0

    async def get(self, name: Any) -> Any:
        try:
            return await super().get(name)
        finally:
            self.reads += 1


class Watcher:
    def __init__(self, redis: CountingRedis) -> None:
        self.redis, self.losses = redis, 0

    def on_loss(self) -> int:
        self.losses += 1
        return 1

    async def next_reads(self, count: int = 2) -> None:
        """Return once the watcher has read `count` more times (the first may have been under
        way before the caller's change)."""
        target = self.redis.reads + count
        async with asyncio.timeout(5):
            while self.redis.reads < target:
                await asyncio.sleep(EVERY_S / 2)


Start = Callable[..., Awaitable[Watcher]]


@pytest.fixture
async def start(redis_url: str, prefix: str) -> AsyncIterator[Start]:
    """`start(url)` runs `watch_losses` on the key `{prefix}losses` of the Redis at `url` (the
    suite's by default) until the test ends."""
    clients: list[CountingRedis] = []
    stop, tasks = asyncio.Event(), []

    async def started(url: str = redis_url) -> Watcher:
        client = CountingRedis.from_url(url, socket_connect_timeout=0.2)
        clients.append(client)
        watcher = Watcher(client)
        tasks.append(
            asyncio.create_task(
                watch_losses(client, f"{prefix}losses", watcher.on_loss, stop, EVERY_S)
            )
        )
        await watcher.next_reads(1)
        return watcher

    yield started
    stop.set()
    await asyncio.gather(*tasks)
    for client in clients:
        await client.aclose()


async def test_a_changed_mark_resyncs_and_the_mark_found_at_start_does_not(
    start: Start, redis: Redis, prefix: str
) -> None:
    """The mark there at the first read is no loss; each change after it is one."""
    await redis.set(f"{prefix}losses", "epoch-1")
    watcher = await start()
    await watcher.next_reads()
    assert watcher.losses == 0
    await redis.set(f"{prefix}losses", "epoch-2")
    await watcher.next_reads()
    assert watcher.losses == 1


async def test_a_missing_mark_is_no_loss_until_the_relay_sets_a_new_one(
    start: Start, redis: Redis, prefix: str
) -> None:
    """Wiped (the relay has not noticed yet): nothing; the relay's new mark: one loss."""
    await redis.set(f"{prefix}losses", "epoch-1")
    watcher = await start()
    await redis.delete(f"{prefix}losses")
    await watcher.next_reads()
    assert watcher.losses == 0
    await redis.set(f"{prefix}losses", "epoch-2")
    await watcher.next_reads()
    assert watcher.losses == 1


async def test_a_mark_that_appears_where_none_was_seen_is_a_loss(
    start: Start, redis: Redis, prefix: str
) -> None:
    """No mark at the first read (a new deployment, or a wipe the relay has not noticed yet),
    and the wipe happens before the watcher saw the relay's first mark: the mark the relay sets
    next is a loss. Else sockets connected meanwhile would never hear of the wipe."""
    watcher = await start()
    await redis.set(f"{prefix}losses", "epoch-2")
    await watcher.next_reads()
    assert watcher.losses == 1


async def test_a_deployments_first_mark_appearing_where_none_was_seen_is_no_loss(
    start: Start, redis: Redis, prefix: str
) -> None:
    """A new deployment: the watcher starts before the relay's first epoch, whose mark says it is
    the first (Redis never held anything to lose): no loss. A mark after it is one."""
    watcher = await start()
    await redis.set(f"{prefix}losses", first_mark("epoch-1"))
    await watcher.next_reads()
    assert watcher.losses == 0
    await redis.set(f"{prefix}losses", "epoch-2")
    await watcher.next_reads()
    assert watcher.losses == 1


async def test_a_first_mark_replacing_a_seen_mark_is_a_loss(
    start: Start, redis: Redis, prefix: str
) -> None:
    """Only where no mark was seen does a first mark mean nothing was lost."""
    await redis.set(f"{prefix}losses", "epoch-1")
    watcher = await start()
    await redis.set(f"{prefix}losses", first_mark("epoch-2"))
    await watcher.next_reads()
    assert watcher.losses == 1


async def test_a_watcher_that_cannot_read_the_mark_says_so_once(start: Start) -> None:
    """Against a Redis that does not answer, every read fails: one `loss_mark_unreadable`
    warning for the whole outage, not one per read, and no loss called."""
    with capture_logs() as logs:
        watcher = await start(f"redis://127.0.0.1:{free_port()}/0")
        await watcher.next_reads(3)
    unreadable = [e for e in logs if e["event"] == "loss_mark_unreadable"]
    assert ([e["log_level"] for e in unreadable], watcher.losses) == (["warning"], 0)
