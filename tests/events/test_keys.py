"""Independent ordering keys against a real Redis: a slow key holds up only its own entries; the
runner goes on reading and running other keys, acknowledges each entry when it is done, keeps
one key's entries in order and holds at most `max_in_flight` entries."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from libs.events.dispatch import envelope_of, stream_key
from libs.events.runner import Delivery, RunnerConfig
from tests.events.helpers import eventually
from tests.events.runners import Running, make_runner, pending_count, probe_entry

# Nothing is reclaimed during these tests: the slow entry is still being handled.
PATIENT = RunnerConfig(block_ms=20, claim_idle_ms=60_000, reclaim_interval_s=0.05)


class SlowFirst:
    """A handler that blocks on the first entry of `probe-slow` until `release` is set."""

    def __init__(self) -> None:
        self.started, self.release = asyncio.Event(), asyncio.Event()
        self.began: list[tuple[str, int]] = []
        self.done: list[tuple[str, int]] = []

    async def __call__(self, d: Delivery) -> None:
        env = envelope_of(d)
        self.began.append((env.stream_id, env.version))
        if (env.stream_id, env.version) == ("probe-slow", 1):
            self.started.set()
            await self.release.wait()
        self.done.append((env.stream_id, env.version))

    def finished(self, stream_id: str) -> list[int]:
        return [v for s, v in self.done if s == stream_id]


async def test_a_slow_key_does_not_hold_up_other_keys_read_in_a_later_batch(
    redis: Redis, prefix: str, running: Running
) -> None:
    """While one key's handler is blocked, entries of other keys read afterwards are handled and
    acknowledged; the slow key's next entry waits for it and then runs, in order."""
    stream, handler = prefix + "s", SlowFirst()
    running.start(make_runner(redis, stream, handler, config=PATIENT, key=stream_key))
    await redis.xadd(stream, probe_entry("probe-slow", 1))
    await asyncio.wait_for(handler.started.wait(), 5)
    await redis.xadd(stream, probe_entry("probe-slow", 2))
    for v in (1, 2, 3):
        await redis.xadd(stream, probe_entry("probe-fast", v))
    try:
        await eventually(lambda: _is(handler.finished("probe-fast"), [1, 2, 3]), timeout=5)
        await eventually(lambda: _pending_is(redis, stream, 2))
        assert ("probe-slow", 2) not in handler.began
    finally:
        handler.release.set()
    await eventually(lambda: _is(handler.finished("probe-slow"), [1, 2]))
    await eventually(lambda: _pending_is(redis, stream, 0))


async def _is(found: list[int], expected: list[int]) -> bool:
    return found == expected


async def _pending_is(redis: Redis, stream: str, count: int) -> bool:
    return await pending_count(redis, stream) == count


async def test_the_runner_holds_at_most_max_in_flight_entries(
    redis: Redis, prefix: str, running: Running
) -> None:
    """With `max_in_flight` entries read and unfinished the runner reads no more; it reads the
    rest once they are done."""
    stream, handler = prefix + "s", SlowFirst()
    for sid, v in (("probe-slow", 1), ("probe-slow", 2), ("probe-fast", 1)):
        await redis.xadd(stream, probe_entry(sid, v))
    config = RunnerConfig(block_ms=20, claim_idle_ms=60_000, max_in_flight=2)
    running.start(make_runner(redis, stream, handler, config=config, key=stream_key))
    await asyncio.wait_for(handler.started.wait(), 5)
    try:
        assert await pending_count(redis, stream) == 2
        assert handler.began == [("probe-slow", 1)]
    finally:
        handler.release.set()
    await eventually(lambda: _is(handler.finished("probe-fast"), [1]))
    await eventually(lambda: _is(handler.finished("probe-slow"), [1, 2]))
    await eventually(lambda: _pending_is(redis, stream, 0))
