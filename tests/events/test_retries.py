"""Retries against a real Redis: a failing entry stays pending and is retried with growing pauses;
it goes to the dead-letter stream only after both the delivery limit and the retry window since
its first failure, which counts across consumers; a poison message still goes at once."""

from __future__ import annotations

import itertools
import time
from datetime import datetime
from typing import Any

import pytest
from redis.asyncio import Redis

from libs.events.retry import Failures, pause_s
from libs.events.runner import Delivery, PoisonMessage, RunnerConfig
from libs.runtime.commands import COMMAND_RUNNER
from services.fanout.projector import RUNNER as PROJECTOR_RUNNER
from tests.events.helpers import eventually
from tests.events.runners import Running, make_runner, pending_count, probe_entry

TEN_MINUTES_S = 600.0


def retrying(window_s: float, first_s: float = 0.05, cap_s: float = 0.2) -> RunnerConfig:
    return RunnerConfig(
        block_ms=20,
        claim_idle_ms=5_000,
        reclaim_interval_s=0.01,
        max_deliveries=2,
        retry_first_pause_s=first_s,
        retry_max_pause_s=cap_s,
        retry_window_s=window_s,
    )


async def dead_letters(redis: Redis, stream: str) -> list[dict[bytes, bytes]]:
    return [fields for _, fields in await redis.xrange(stream + ":dead")]


async def _has_dead_letter(redis: Redis, stream: str) -> bool:
    return bool(await redis.xlen(stream + ":dead"))


def _ms(iso: bytes) -> float:
    return datetime.fromisoformat(iso.decode().replace("Z", "+00:00")).timestamp() * 1000


def test_pauses_double_from_the_first_up_to_the_cap() -> None:
    """The pause after the n-th failed delivery doubles each time and stops growing at the cap."""
    assert [pause_s(n, 1.0, 60.0) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]


def test_every_runner_retries_for_at_least_ten_minutes() -> None:
    """The default retry window, the command runners' and the projector's are 10 minutes."""
    for config in (RunnerConfig(), COMMAND_RUNNER, PROJECTOR_RUNNER):
        assert config.retry_window_s >= TEN_MINUTES_S
        assert config.retry_max_pause_s <= 60.0


@pytest.mark.slow  # waits out the retry window
async def test_a_failing_entry_is_retried_with_growing_pauses_then_dead_lettered_after_the_window(
    redis: Redis, prefix: str, running: Running
) -> None:
    """An entry whose handler always fails stays pending between attempts, each pause at least
    the doubled one before (up to the cap), and is dead-lettered only once the window since its
    first failure has passed, with its first failure time and attempt count."""
    stream, attempts = prefix + "s", []

    async def handle(d: Delivery) -> None:
        attempts.append(time.monotonic())
        raise ValueError("still broken")

    running.start(make_runner(redis, stream, handle, config=retrying(window_s=1.0)))
    await redis.xadd(stream, probe_entry("probe-r", 1))
    await eventually(lambda: _at_least(attempts, 2))
    assert await pending_count(redis, stream) == 1
    await eventually(lambda: _has_dead_letter(redis, stream), timeout=10)
    noticed = time.monotonic()
    gaps = [later - earlier for earlier, later in itertools.pairwise(attempts)]
    for n, gap in enumerate(gaps, start=1):
        assert gap >= pause_s(n, 0.05, 0.2) - 0.01, (n, gaps)
    assert noticed - attempts[0] >= 1.0
    [dead] = await dead_letters(redis, stream)
    assert int(dead[b"deliveries"]) == len(attempts) >= 2
    assert dead[b"error"] == b"ValueError: still broken"
    dead_at_ms = int((await redis.xrange(stream + ":dead"))[0][0].split(b"-")[0])
    assert dead_at_ms - _ms(dead[b"firstFailure"]) >= 1000
    assert await pending_count(redis, stream) == 0


async def _at_least(items: list[Any], count: int) -> bool:
    return len(items) >= count


@pytest.mark.slow  # waits out retry pauses
async def test_an_entry_that_fails_for_a_while_then_succeeds_is_handled_not_dead_lettered(
    redis: Redis, prefix: str, running: Running
) -> None:
    """Failing more times than the delivery limit within the window, then succeeding: the entry
    is handled and acknowledged, nothing is dead-lettered and its retry record is gone."""
    stream, attempts, handled = prefix + "s", [], []

    async def handle(d: Delivery) -> None:
        attempts.append(d.deliveries)
        if len(attempts) <= 5:
            raise ConnectionError("database away")
        handled.append(d.entry_id)

    config = retrying(window_s=60.0, first_s=0.01, cap_s=0.02)
    running.start(make_runner(redis, stream, handle, config=config))
    await redis.xadd(stream, probe_entry("probe-r", 1))
    await eventually(lambda: _at_least(handled, 1))
    assert attempts == [1, 2, 3, 4, 5, 6]
    await eventually(lambda: _no_pending(redis, stream))
    assert await dead_letters(redis, stream) == []
    await eventually(lambda: _no_records(Failures(redis, stream, "g")))


async def _no_pending(redis: Redis, stream: str) -> bool:
    return await pending_count(redis, stream) == 0


async def _no_records(failures: Failures) -> bool:
    return await failures.entries() == []


@pytest.mark.slow  # waits out the retry window
async def test_the_window_counts_from_the_first_failure_when_another_consumer_takes_over(
    redis: Redis, prefix: str, running: Running
) -> None:
    """A consumer fails an entry and stops; another claims it and keeps failing: the entry is
    dead-lettered the window after the first consumer's first failure, not its own."""
    stream, attempts = prefix + "s", []

    async def handle(d: Delivery) -> None:
        attempts.append(time.time() * 1000)
        raise ValueError("broken everywhere")

    first = Running()
    first.start(make_runner(redis, stream, handle, consumer="first", config=retrying(0.8)))
    await redis.xadd(stream, probe_entry("probe-r", 1))
    await eventually(lambda: _at_least(attempts, 2))
    await first.close()
    took_over = time.time() * 1000
    config = RunnerConfig(
        block_ms=20,
        claim_idle_ms=50,
        reclaim_interval_s=0.01,
        max_deliveries=2,
        retry_first_pause_s=0.05,
        retry_max_pause_s=0.1,
        retry_window_s=0.8,
    )
    running.start(make_runner(redis, stream, handle, consumer="second", config=config))
    await eventually(lambda: _has_dead_letter(redis, stream), timeout=10)
    [dead] = await dead_letters(redis, stream)
    first = _ms(dead[b"firstFailure"])  # Redis's clock, whole ms: the machine's clock too
    assert (
        attempts[0] - 1 <= first <= attempts[1]
    )  # recorded after the first failure, before the next
    assert first < took_over
    assert dead[b"consumer"] == b"second"


async def test_a_poison_message_is_dead_lettered_at_once_despite_the_window(
    redis: Redis, prefix: str, running: Running
) -> None:
    """A handler raising PoisonMessage sends the entry to the dead-letter stream on its first
    delivery, even with a ten-minute retry window."""
    stream = prefix + "s"

    async def handle(d: Delivery) -> None:
        raise PoisonMessage("never decodable")

    config = RunnerConfig(block_ms=20, reclaim_interval_s=0.01)
    running.start(make_runner(redis, stream, handle, config=config))
    await redis.xadd(stream, probe_entry("probe-p", 1))
    await eventually(lambda: _has_dead_letter(redis, stream), timeout=3)
    [dead] = await dead_letters(redis, stream)
    assert dead[b"deliveries"] == b"1"
    assert dead[b"error"] == b"poison: never decodable"
    assert b"firstFailure" in dead
    await eventually(lambda: _no_pending(redis, stream))
