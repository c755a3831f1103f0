"""The consumer-group runner against a real Redis: acknowledgement, ordering, reclaim of a dead
consumer's message, dead-lettering of poison, recovery from data loss, trimming and stopping."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Awaitable

import psycopg
import pytest
from redis.asyncio import Redis

from libs.events.dispatch import envelope_of, stream_key
from libs.events.runner import Delivery
from libs.events.trim import trim_stream
from tests.events.consumer_proc import apply_effect
from tests.events.helpers import eventually
from tests.events.runners import Running, make_runner, pending_count, probe_entry


async def test_each_entry_is_handled_and_acknowledged_in_order_per_stream(
    redis: Redis, prefix: str, running: Running
) -> None:
    """Entries of one event stream are handled in order; every handled entry is acknowledged."""
    stream, seen = prefix + "s", []

    async def handle(d: Delivery) -> None:
        env = envelope_of(d)
        seen.append((env.stream_id, env.version))

    running.start(make_runner(redis, stream, handle, key=stream_key))
    for v in range(1, 51):
        for sid in ("probe-a", "probe-b"):
            await redis.xadd(stream, probe_entry(sid, v))
    await eventually(lambda: _equals(len(seen), 100))
    for sid in ("probe-a", "probe-b"):
        assert [v for s, v in seen if s == sid] == list(range(1, 51))
    await eventually(lambda: _zero(pending_count(redis, stream)))


async def _equals(a: int, b: int) -> bool:
    return a == b


async def _zero(value: Awaitable[int]) -> bool:
    return await value == 0


async def test_poison_message_is_dead_lettered_while_later_messages_flow(
    redis: Redis, prefix: str, running: Running
) -> None:
    """A handler that always fails on one entry: it moves to the dead-letter stream with its error
    after the delivery limit, and the entries behind it are handled meanwhile."""
    stream, handled, attempts = prefix + "s", [], []

    async def handle(d: Delivery) -> None:
        env = envelope_of(d)
        if env.stream_id == "probe-poison":
            attempts.append(d.deliveries)
            raise ValueError("cannot handle this one")
        handled.append(env.version)

    running.start(make_runner(redis, stream, handle))
    await redis.xadd(stream, probe_entry("probe-poison", 1))
    for v in range(1, 21):
        await redis.xadd(stream, probe_entry("probe-ok", v))
    await eventually(lambda: _equals(len(handled), 20), timeout=2)
    await eventually(lambda: _has_entries(redis, stream + ":dead", 1))
    [(_, dead)] = await redis.xrange(stream + ":dead")
    assert dead[b"error"] == b"ValueError: cannot handle this one"
    assert dead[b"deliveries"] == b"3"
    assert b"probe-poison" in dead[b"field:envelope"]
    assert attempts == [1, 2, 3]
    assert await pending_count(redis, stream) == 0


async def _has_entries(redis: Redis, stream: str, count: int) -> bool:
    return int(await redis.xlen(stream)) >= count


async def test_undecodable_entry_is_dead_lettered_at_once(
    redis: Redis, prefix: str, running: Running
) -> None:
    """An entry that is not a catalogue event goes to the dead-letter stream on first delivery."""
    stream = prefix + "s"

    async def handle(d: Delivery) -> None:
        envelope_of(d)

    running.start(make_runner(redis, stream, handle))
    await redis.xadd(stream, {b"envelope": b"{not json"})
    await eventually(lambda: _has_entries(redis, stream + ":dead", 1))
    [(_, dead)] = await redis.xrange(stream + ":dead")
    assert dead[b"deliveries"] == b"1"
    assert dead[b"error"].startswith(b"poison:")


@pytest.fixture
async def effects(conn: psycopg.AsyncConnection) -> psycopg.AsyncConnection:
    await conn.execute("CREATE TABLE IF NOT EXISTS bus_test_effects (event_id uuid, entry_id text)")
    return conn


@pytest.mark.process  # the consumer that is killed is a process
@pytest.mark.parametrize("phase", ["after-commit", "before-commit"] * 3)
async def test_message_of_a_killed_consumer_is_processed_by_another_once_in_effect(
    redis: Redis,
    redis_url: str,
    database_url: str,
    prefix: str,
    running: Running,
    effects: psycopg.AsyncConnection,
    phase: str,
) -> None:
    """A consumer SIGKILLed mid-message (before or after its commit): another consumer claims the
    entry, and the effect exists exactly once."""
    stream, marker = prefix + "s", prefix + "marker"
    entry = await redis.xadd(stream, probe_entry(f"probe-{uuid.uuid4()}", 1))
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.events.consumer_proc",
            redis_url,
            database_url,
            stream,
            "g",
            marker,
            phase,
        ],
        env=env,
    )
    try:
        await eventually(lambda: _exists(redis, marker))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert await pending_count(redis, stream) == 1

    async def handle(d: Delivery) -> None:
        async with effects.transaction():
            await apply_effect(effects, "g", d)

    running.start(make_runner(redis, stream, handle, consumer="survivor"))
    await eventually(lambda: _zero(pending_count(redis, stream)))
    cur = await effects.execute(
        "SELECT count(*) FROM bus_test_effects WHERE entry_id = %s", (entry.decode(),)
    )
    assert (await cur.fetchone()) == (1,)


async def _exists(redis: Redis, key: str) -> bool:
    return bool(await redis.exists(key))


async def test_runner_recreates_its_group_after_redis_lost_its_data(
    redis: Redis, prefix: str, running: Running
) -> None:
    """After every key under the prefix is deleted, the runner recreates its group and goes on."""
    stream, seen = prefix + "s", []

    async def handle(d: Delivery) -> None:
        seen.append(envelope_of(d).version)

    running.start(make_runner(redis, stream, handle))
    await redis.xadd(stream, probe_entry("probe-x", 1))
    await eventually(lambda: _equals(len(seen), 1))
    await redis.delete(*[k async for k in redis.scan_iter(match=f"{prefix}*")])
    await redis.xadd(stream, probe_entry("probe-x", 2))
    await eventually(lambda: _equals(len(seen), 2))
    assert seen == [1, 2]


async def test_trim_keeps_every_entry_some_group_has_not_acknowledged(
    redis: Redis, prefix: str
) -> None:
    """Trimming removes only entries every group has read and acknowledged."""
    stream = prefix + "s"
    ids = [await redis.xadd(stream, {b"n": str(i).encode()}) for i in range(10)]
    await redis.xgroup_create(stream, "fast", id="0")
    await redis.xgroup_create(stream, "slow", id="0")
    await redis.xreadgroup("fast", "c", {stream: ">"})
    await redis.xack(stream, "fast", *ids)
    await redis.xreadgroup("slow", "c", {stream: ">"}, count=6)
    await redis.xack(stream, "slow", *ids[:4])
    await trim_stream(redis, stream, retention_ms=0)
    remaining = [i for i, _ in await redis.xrange(stream)]
    assert remaining == ids[4:]
    await redis.xack(stream, "slow", *ids[4:6])
    await trim_stream(redis, stream, retention_ms=0)
    assert [i for i, _ in await redis.xrange(stream)] == ids[6:]


async def test_trim_keeps_entries_within_the_retention_window(redis: Redis, prefix: str) -> None:
    """Acknowledged entries younger than the retention window stay on the stream."""
    stream = prefix + "s"
    ids = [await redis.xadd(stream, {b"n": b"1"}) for _ in range(3)]
    await redis.xgroup_create(stream, "g", id="0")
    await redis.xreadgroup("g", "c", {stream: ">"})
    await redis.xack(stream, "g", *ids)
    await trim_stream(redis, stream, retention_ms=60_000)
    assert await redis.xlen(stream) == 3


async def test_stop_finishes_the_message_in_hand_and_acknowledges_it(
    redis: Redis, prefix: str
) -> None:
    """Setting stop while a handler runs lets it finish; its entry is acknowledged, none lost."""
    stream, started, release, finished = prefix + "s", asyncio.Event(), asyncio.Event(), []

    async def handle(d: Delivery) -> None:
        started.set()
        await release.wait()
        finished.append(d.entry_id)

    stop = asyncio.Event()
    task = asyncio.create_task(make_runner(redis, stream, handle).run(stop))
    entry = (await redis.xadd(stream, probe_entry("probe-s", 1))).decode()
    await asyncio.wait_for(started.wait(), 5)
    stop.set()
    release.set()
    await asyncio.wait_for(task, 5)
    assert finished == [entry]
    assert await pending_count(redis, stream) == 0


async def test_a_handler_sees_the_entries_of_its_key_still_to_come_in_the_batch(
    redis: Redis, prefix: str, running: Running
) -> None:
    """Entries read in one batch: each delivery lists the later entries of its own key, in
    order, and none of another key."""
    stream, seen = prefix + "s", {}

    async def handle(d: Delivery) -> None:
        env = envelope_of(d)
        seen[(env.stream_id, env.version)] = [
            (envelope_of(x).stream_id, envelope_of(x).version) for x in d.later
        ]

    for v in range(1, 4):
        for sid in ("probe-a", "probe-b"):
            await redis.xadd(stream, probe_entry(sid, v))
    running.start(make_runner(redis, stream, handle, key=stream_key))
    await eventually(lambda: _equals(len(seen), 6))
    for sid in ("probe-a", "probe-b"):
        assert seen[(sid, 1)] == [(sid, 2), (sid, 3)]
        assert seen[(sid, 2)] == [(sid, 3)]
        assert seen[(sid, 3)] == []
