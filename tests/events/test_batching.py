"""Commands issued in one loop turn go to a real Redis in one pipeline, each with its own reply
or error, in the order they were issued."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from libs.events.batching import Batcher


async def test_commands_of_one_loop_turn_share_one_pipeline(redis: Redis, prefix: str) -> None:
    """50 concurrent XADDs: one pipeline, 50 distinct ids, entries in the order issued."""
    batcher, stream = Batcher(redis), prefix + "batched"
    ids = await asyncio.gather(
        *(batcher.execute("XADD", stream, "*", b"n", str(i)) for i in range(50))
    )
    assert batcher.batches == 1
    assert len(set(ids)) == 50
    entries = await redis.xrange(stream)
    assert [int(fields[b"n"]) for _, fields in entries] == list(range(50))
    assert [entry_id for entry_id, _ in entries] == ids


async def test_a_failing_command_fails_alone(redis: Redis, prefix: str) -> None:
    """A command Redis refuses raises for its caller only; the others of its batch succeed."""
    batcher, key = Batcher(redis), prefix + "a-string"
    await redis.set(key, "x")
    good = batcher.execute("PUBLISH", prefix + "channel", b"hello")
    bad = batcher.execute("XADD", key, "*", b"f", b"v")
    also_good = batcher.execute("GET", key)
    assert await good == 0
    with pytest.raises(ResponseError):
        await bad
    assert await also_good == b"x"
    assert batcher.batches == 1


async def test_commands_issued_after_a_turn_go_in_the_next_batch(redis: Redis, prefix: str) -> None:
    """A caller that waits for its reply before issuing the next command gets one batch each."""
    batcher, key = Batcher(redis), prefix + "counter"
    for expected in range(1, 4):
        assert await batcher.execute("INCR", key) == expected
    assert batcher.batches == 3
