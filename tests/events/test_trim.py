"""Keeping grouped streams small against a real Redis: acknowledged entries of every grouped
stream (command streams included) are trimmed, unacknowledged ones never; consumers a dead
process left are removed, but only once nothing is pending on them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from redis.asyncio import Redis

from libs.events.commands import commands_stream
from libs.events.dispatch import envelope_of
from libs.events.retry import Failures
from libs.events.runner import Delivery, RunnerConfig
from libs.events.streams import events_stream
from libs.events.trim import (
    LAG_PAGE,
    group_lag,
    grouped_streams,
    remove_idle_consumers,
    trim_forever,
)
from tests.events.helpers import eventually
from tests.events.runners import Running, consumer_names, make_runner, pending_count, probe_entry

IDLE_MS = 150
# The bound when a live runner must survive the trimmer. Its idle time restarts at each claim
# pass (every 20 ms here; before Redis 7.2 a blocked read that found nothing restarts nothing),
# so the bound must outlast any pause of the test's event loop on a loaded machine: with 150 ms
# the trimmer once removed the live runner, idle behind four workers and the linters on 2 cores.
LIVE_IDLE_MS = 1000


@contextlib.asynccontextmanager
async def trimming(
    redis: Redis, streams: tuple[str, ...], idle_ms: int = IDLE_MS
) -> AsyncIterator[None]:
    """`trim_forever` with bounds of milliseconds, stopped at the end of the block."""
    stop = asyncio.Event()
    task = asyncio.create_task(
        trim_forever(
            redis, streams, stop, retention_ms=0, interval_s=0.02, consumer_idle_ms=idle_ms
        )
    )
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def consumer_idle_ms(redis: Redis, stream: str, group: str, name: str) -> int:
    found: Any = await redis.xinfo_consumers(stream, group)
    return next(int(c["idle"]) for c in found if c["name"].decode() == name)


def test_grouped_streams_are_every_event_stream_and_every_command_stream() -> None:
    """The streams trimmed are the event streams and each command-executing service's stream."""
    streams = grouped_streams("p:")
    assert events_stream("p:", "broadcast") in streams
    for service in ("broadcast", "acceptance", "presence"):
        assert commands_stream("p:", service) in streams


async def test_acknowledged_command_entries_are_trimmed_and_unacknowledged_ones_kept(
    redis: Redis, prefix: str
) -> None:
    """On a command stream, entries its group acknowledged go; pending and unread ones stay."""
    stream = commands_stream(prefix, "acceptance")
    await redis.xgroup_create(stream, "acceptance", id="0", mkstream=True)
    ids = [await redis.xadd(stream, {b"command": str(i).encode()}) for i in range(6)]
    await redis.xreadgroup("acceptance", "c", {stream: ">"}, count=4)
    await redis.xack(stream, "acceptance", *ids[:2])
    async with trimming(redis, grouped_streams(prefix)):
        await eventually(lambda: _first_is(redis, stream, ids[2]))
    assert [i for i, _ in await redis.xrange(stream)] == ids[2:]
    assert await pending_count(redis, stream, "acceptance") == 2


async def _first_is(redis: Redis, stream: str, entry: bytes) -> bool:
    first = await redis.xrange(stream, count=1)
    return bool(first) and first[0][0] == entry


async def test_an_idle_consumer_with_nothing_pending_is_removed(redis: Redis, prefix: str) -> None:
    """A consumer idle past the bound with no pending entry leaves its group; one that has just
    read an entry stays."""
    stream = commands_stream(prefix, "presence")
    await redis.xgroup_create(stream, "presence", id="0", mkstream=True)
    for name in ("gone", "recent"):
        entry = await redis.xadd(stream, {b"command": name.encode()})
        await redis.xreadgroup("presence", name, {stream: ">"}, count=1)
        await redis.xack(stream, "presence", entry)
    await eventually(lambda: _idle_past(redis, stream, "presence", "gone", IDLE_MS))
    entry = await redis.xadd(stream, {b"command": b"again"})
    await redis.xreadgroup("presence", "recent", {stream: ">"}, count=1)
    await redis.xack(stream, "presence", entry)
    assert await remove_idle_consumers(redis, stream, IDLE_MS) == [("presence", "gone")]
    assert await consumer_names(redis, stream, "presence") == {"recent"}


async def _without(redis: Redis, stream: str, group: str, name: str) -> bool:
    return name not in await consumer_names(redis, stream, group)


async def test_an_idle_consumer_with_pending_entries_stays_until_they_are_taken_elsewhere(
    redis: Redis, prefix: str
) -> None:
    """A consumer idle past the bound but holding pending entries is kept, with its entries
    still pending; once another consumer claimed and acknowledged them it is removed."""
    stream = prefix + "s"
    await redis.xgroup_create(stream, "g", id="0", mkstream=True)
    ids = [await redis.xadd(stream, {b"n": str(i).encode()}) for i in range(2)]
    await redis.xreadgroup("g", "dead", {stream: ">"})
    await redis.xgroup_createconsumer(stream, "g", "empty")
    await eventually(lambda: _idle_past(redis, stream, "g", "empty", IDLE_MS))
    removed = await remove_idle_consumers(redis, stream, IDLE_MS)
    assert removed == [("g", "empty")]
    assert await consumer_names(redis, stream) == {"dead"}
    assert await pending_count(redis, stream) == 2
    await redis.xclaim(stream, "g", "survivor", 0, ids)
    await redis.xack(stream, "g", *ids)
    await eventually(lambda: _idle_past(redis, stream, "g", "dead", IDLE_MS))
    assert ("g", "dead") in await remove_idle_consumers(redis, stream, IDLE_MS)


async def _idle_past(redis: Redis, stream: str, group: str, name: str, bound_ms: int) -> bool:
    return await consumer_idle_ms(redis, stream, group, name) >= bound_ms


async def test_a_dead_consumers_entries_are_run_by_a_live_runner_then_the_dead_one_goes(
    redis: Redis, prefix: str, running: Running
) -> None:
    """A consumer that read entries and died: a live runner claims and handles them, then the
    trimmer removes the dead consumer and the handled entries."""
    stream, handled = prefix + "s", []

    async def handle(d: Delivery) -> None:
        handled.append(envelope_of(d).version)

    await redis.xgroup_create(stream, "g", id="0", mkstream=True)
    for v in (1, 2, 3):
        await redis.xadd(stream, probe_entry("probe-d", v))
    await redis.xreadgroup("g", "dead", {stream: ">"})
    config = RunnerConfig(block_ms=20, claim_idle_ms=50, reclaim_interval_s=0.02)
    running.start(make_runner(redis, stream, handle, consumer="live", config=config))
    async with trimming(redis, (stream,), idle_ms=LIVE_IDLE_MS):
        await eventually(lambda: _without(redis, stream, "g", "dead"))
        await eventually(lambda: _length_is(redis, stream, 0))
    assert sorted(handled) == [1, 2, 3]
    assert await consumer_names(redis, stream) == {"live"}


async def _length_is(redis: Redis, stream: str, length: int) -> bool:
    return int(await redis.xlen(stream)) == length


async def test_failure_records_of_entries_no_longer_pending_are_removed(
    redis: Redis, prefix: str
) -> None:
    """A retry record left behind for an entry its group has since acknowledged is removed; the
    record of an entry still pending stays."""
    stream = prefix + "s"
    await redis.xgroup_create(stream, "g", id="0", mkstream=True)
    done, waiting = (await redis.xadd(stream, {b"n": b"1"}), await redis.xadd(stream, {b"n": b"2"}))
    await redis.xreadgroup("g", "c", {stream: ">"})
    failures = Failures(redis, stream, "g")
    await failures.record(done.decode(), 1, "boom")
    await failures.record(waiting.decode(), 1, "boom")
    await redis.xack(stream, "g", done)
    async with trimming(redis, (stream,)):
        await eventually(lambda: _recorded(failures, [waiting.decode()]))


async def _recorded(failures: Failures, expected: list[str]) -> bool:
    return sorted(await failures.entries()) == expected


async def test_a_groups_lag_is_counted_when_redis_does_not_report_it(
    redis: Redis, prefix: str
) -> None:
    """Redis 6.2 (the embedded server) has no `lag` in `XINFO GROUPS`: the entries after the
    group's last delivered one are counted instead, across several pages, and agree with the
    `lag` Redis 7 reports for the same group."""
    stream = f"{prefix}lag-probe"
    for _ in range(LAG_PAGE * 2 + 7):
        await redis.xadd(stream, {"n": "1"})
    await redis.xgroup_create(stream, "g", id="0")
    await redis.xreadgroup("g", "c", {stream: ">"}, count=5)
    [row] = await redis.xinfo_groups(stream)
    as_on_redis_6 = {key: value for key, value in row.items() if key != "lag"}
    assert await group_lag(redis, stream, as_on_redis_6) == LAG_PAGE * 2 + 2
    if "lag" in row:
        assert await group_lag(redis, stream, row) == LAG_PAGE * 2 + 2
