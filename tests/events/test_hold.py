"""Holding a key on failure (the projector's runner) against a real Redis: an entry whose handler
fails is retried in place with growing pauses while the later entries of its key wait and other
keys go on; on stop the held entry and those behind it stay pending, and the next consumer runs
what was left pending in stream order per key, before newer entries of those keys."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from redis.asyncio import Redis

from libs.events.dispatch import envelope_of, stream_key
from libs.events.retry import Failures
from libs.events.runner import Delivery
from services.fanout.projector import RUNNER as PROJECTOR_RUNNER
from tests.events.helpers import eventually
from tests.events.runners import Running, make_runner, pending_count, probe_entry

HOLDING = replace(
    PROJECTOR_RUNNER,
    block_ms=20,
    reclaim_interval_s=0.02,
    retry_first_pause_s=0.02,
    retry_max_pause_s=0.1,
    max_deliveries=3,
)

Key = tuple[str, int]


class Flaky:
    """Fails every attempt at the entries in `failing` until they are removed from it; records
    each attempt and each success, as (event stream, version)."""

    def __init__(self, *failing: Key) -> None:
        self.failing = set(failing)
        self.attempts: list[Key] = []
        self.done: list[Key] = []

    async def __call__(self, d: Delivery) -> None:
        env = envelope_of(d)
        key = (env.stream_id, env.version)
        self.attempts.append(key)
        if key in self.failing:
            raise RuntimeError(f"{key} failed")
        self.done.append(key)

    def finished(self, stream_id: str) -> list[int]:
        return [v for s, v in self.done if s == stream_id]


async def add(redis: Redis, stream: str, *keys: Key) -> list[str]:
    ids = [await redis.xadd(stream, probe_entry(sid, v)) for sid, v in keys]
    return [i.decode() for i in ids]


@pytest.mark.slow  # waits out retry pauses
async def test_a_failed_entry_holds_its_key_while_other_keys_go_on(
    redis: Redis, prefix: str, running: Running
) -> None:
    """The first entry of a key fails three times: the key's later entries wait (none is even
    tried), another key's entries are all handled meanwhile; once it succeeds, the key's entries
    run in order and nothing is left pending."""
    stream, handler = prefix + "s", Flaky(("probe-x", 1))
    await add(redis, stream, ("probe-x", 1), ("probe-x", 2), ("probe-y", 1), ("probe-x", 3))
    running.start(make_runner(redis, stream, handler, config=HOLDING, key=stream_key))
    await eventually(lambda: _true(handler.attempts.count(("probe-x", 1)) >= 3))
    await add(redis, stream, ("probe-y", 2))
    await eventually(lambda: _true(handler.finished("probe-y") == [1, 2]))
    assert {k for k in handler.attempts if k[0] == "probe-x"} == {("probe-x", 1)}
    handler.failing.clear()
    await eventually(lambda: _true(handler.finished("probe-x") == [1, 2, 3]))
    await eventually(lambda: _pending_is(redis, stream, 0))


async def test_the_entries_of_a_held_key_do_not_count_against_max_in_flight(
    redis: Redis, prefix: str, running: Running
) -> None:
    """With at most two entries in hand, a held key with three entries waiting behind it does
    not stop the runner from reading and handling another key's entries."""
    stream, handler = prefix + "s", Flaky(("probe-x", 1))
    await add(redis, stream, *(("probe-x", v) for v in range(1, 5)))
    await add(redis, stream, *(("probe-y", v) for v in range(1, 4)))
    config = replace(HOLDING, max_in_flight=2)
    running.start(make_runner(redis, stream, handler, config=config, key=stream_key))
    await eventually(lambda: _true(handler.finished("probe-y") == [1, 2, 3]))
    assert handler.finished("probe-x") == []
    handler.failing.clear()
    await eventually(lambda: _true(handler.finished("probe-x") == [1, 2, 3, 4]))
    await eventually(lambda: _pending_is(redis, stream, 0))


async def test_an_entry_still_failing_after_the_window_is_dead_lettered_then_its_key_goes_on(
    redis: Redis, prefix: str, running: Running
) -> None:
    """With no retry window, an entry that always fails is tried `max_deliveries` times, goes to
    the dead-letter stream, and only then does the next entry of its key run."""
    stream, handler = prefix + "s", Flaky(("probe-x", 1))
    config = replace(HOLDING, retry_window_s=0.0)
    await add(redis, stream, ("probe-x", 1), ("probe-x", 2))
    running.start(make_runner(redis, stream, handler, config=config, key=stream_key))
    await eventually(lambda: _true(handler.finished("probe-x") == [2]))
    assert handler.attempts == [("probe-x", 1)] * 3 + [("probe-x", 2)]
    assert await redis.xlen(stream + ":dead") == 1
    await eventually(lambda: _pending_is(redis, stream, 0))


async def test_on_stop_a_held_key_stays_pending_and_the_next_consumer_runs_it_in_order(
    redis: Redis, prefix: str
) -> None:
    """Stopping while a key is held acknowledges neither its failed entry nor those behind it
    (another key's are); the next consumer, whose handler succeeds, runs them in order before
    an entry of that key added after it started."""
    stream, first = prefix + "s", Flaky(("probe-x", 1))
    await add(redis, stream, ("probe-x", 1), ("probe-x", 2), ("probe-y", 1), ("probe-x", 3))
    before = Running()
    before.start(make_runner(redis, stream, first, "old", config=HOLDING, key=stream_key))
    await eventually(lambda: _true(first.attempts.count(("probe-x", 1)) >= 2))
    await eventually(lambda: _true(first.finished("probe-y") == [1]))
    await before.close()
    assert first.finished("probe-x") == []
    assert await pending_count(redis, stream) == 3
    after, second = Running(), Flaky()
    after.start(make_runner(redis, stream, second, "new", config=HOLDING, key=stream_key))
    await add(redis, stream, ("probe-x", 4))
    try:
        await eventually(lambda: _true(len(second.finished("probe-x")) == 4))
        assert second.finished("probe-x") == [1, 2, 3, 4]
        assert second.finished("probe-y") == []
        await eventually(lambda: _pending_is(redis, stream, 0))
    finally:
        await after.close()


async def test_a_new_consumer_runs_a_backlog_larger_than_a_batch_in_order_before_newer_entries(
    redis: Redis, prefix: str, running: Running
) -> None:
    """Seven entries of one key left pending by a consumer that went away (the first with a
    failure whose pause has not passed), then two more never read: a new consumer claiming two
    at a time runs all nine in stream order."""
    stream, handler = prefix + "s", Flaky()
    await add(redis, stream, *(("probe-x", v) for v in range(1, 8)))
    await redis.xgroup_create(stream, "g", id="0")
    left: list[tuple[bytes, dict[bytes, bytes]]] = (
        await redis.xreadgroup("g", "gone", {stream: ">"})
    )[0][1]
    await Failures(redis, stream, "g").record(left[0][0].decode(), 1, "RuntimeError: earlier")
    await add(redis, stream, ("probe-x", 8), ("probe-x", 9))
    config = replace(HOLDING, batch_size=2, retry_first_pause_s=30.0, retry_max_pause_s=60.0)
    running.start(make_runner(redis, stream, handler, config=config, key=stream_key))
    await eventually(lambda: _true(("probe-x", 9) in handler.done))
    assert handler.finished("probe-x") == list(range(1, 10))
    await eventually(lambda: _pending_is(redis, stream, 0))


async def _true(value: bool) -> bool:
    await asyncio.sleep(0)
    return value


async def _pending_is(redis: Redis, stream: str, count: int) -> bool:
    return await pending_count(redis, stream) == count
