"""The consumer-group runner: reads a Redis stream as one consumer of a group.

- `XREADGROUP` new entries, run the handler, `XACK` only after it returned (its work committed).
- Entries with the same key (by default the entry itself) run in order; different keys run side
  by side and independently (`lanes.py`): the runner keeps reading while a key is slow, a key's
  new entries wait only for that key's entries in hand, each entry is acknowledged when it is
  done, and at most `max_in_flight` entries are in hand. A handler sees the entries of its key
  already read and still to come (`Delivery.later`), so it may skip work a later entry makes moot.
- An entry whose handler failed stays pending and is run again by the reclaim (this consumer's
  or another's) after a growing pause (`retry.py`); once it was delivered `max_deliveries` times
  and its first failure is `retry_window_s` old it goes to the dead-letter stream with its last
  error and is acknowledged. A handler raising `PoisonMessage` sends it there at once, so a
  poison message never stalls the group. A failed entry does not hold up later entries of its
  key (docs/architecture.md, "Events and consumers").
- Entries left pending longer than `claim_idle_ms` by another consumer (it died) are claimed.
- A missing stream or group (Redis lost its data) is recreated and reading goes on.
- On stop every entry in hand is finished and acknowledged; nothing read is abandoned.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from libs.events import deadletter, retry
from libs.events.acks import Acks
from libs.events.lanes import Lanes
from libs.events.retry import Failure, Failures, RetryPolicy

log = structlog.get_logger(__name__)


class PoisonMessage(Exception):
    """Raised by a handler for an entry that can never succeed: dead-letter it at once."""


@dataclass(frozen=True)
class Delivery:
    stream: str
    entry_id: str
    fields: dict[bytes, bytes]
    deliveries: int
    # The entries with the same key after this one, already read, in the order they will run.
    later: tuple[Delivery, ...] = field(default=(), repr=False)


Handler = Callable[[Delivery], Awaitable[None]]
KeyOf = Callable[[Delivery], str]


@dataclass(frozen=True)
class RunnerConfig:
    batch_size: int = 100
    block_ms: int = 1000
    claim_idle_ms: int = 30_000  # another consumer's entry pending this long: it died
    reclaim_interval_s: float = 5.0
    max_deliveries: int = 5
    retry_first_pause_s: float = 1.0
    retry_max_pause_s: float = 60.0
    retry_window_s: float = 600.0
    max_in_flight: int = 0  # entries read and unfinished; 0: twice `batch_size`
    retry_delay_s: float = 1.0  # between attempts to reach Redis
    dead_letter_maxlen: int = 10_000


def by_entry(delivery: Delivery) -> str:
    return delivery.entry_id


def retry_policy(config: RunnerConfig) -> RetryPolicy:
    return RetryPolicy(
        claim_idle_ms=config.claim_idle_ms,
        first_pause_s=config.retry_first_pause_s,
        max_pause_s=config.retry_max_pause_s,
        window_s=config.retry_window_s,
        max_deliveries=config.max_deliveries,
    )


class StreamRunner:
    """One consumer of one group on one stream."""

    def __init__(
        self,
        redis: Redis,
        *,
        stream: str,
        group: str,
        consumer: str,
        handler: Handler,
        dead_letter: str,
        config: RunnerConfig | None = None,
        key: KeyOf = by_entry,
    ) -> None:
        self._redis = redis
        self.stream, self.group, self.consumer = stream, group, consumer
        self._handler = handler
        self._dead_letter = dead_letter
        self._config = config or RunnerConfig()
        self._policy = retry_policy(self._config)
        self._failures = Failures(redis, stream, group)
        self._acks = Acks(redis, stream, group, self._failures.key)
        limit = self._config.max_in_flight or 2 * self._config.batch_size
        self._lanes = Lanes(self._attempt, key, limit)
        self._next_reclaim = 0.0
        self.dead_lettered = 0

    @property
    def handled(self) -> int:
        return self._acks.acknowledged

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set, surviving Redis outages and data loss."""
        log.info("runner_started", stream=self.stream, group=self.group, consumer=self.consumer)
        await self._ensure_group_safely()
        try:
            while not stop.is_set():
                await self._step_safely()
            await self._lanes.finish()
            await self._acks.flush()
        except asyncio.CancelledError:
            self._lanes.cancel()
            raise
        await self._leave()
        log.info("runner_stopped", stream=self.stream, group=self.group, handled=self.handled)

    async def _step_safely(self) -> None:
        try:
            await self._step()
        except ResponseError as e:
            if not _lost_stream_or_group(e):
                raise
            log.warning("runner_group_missing", stream=self.stream, group=self.group)
            await self._ensure_group_safely()
        except (RedisConnectionError, RedisTimeoutError, OSError) as e:
            log.warning("runner_redis_unavailable", stream=self.stream, error=str(e))
            await asyncio.sleep(self._config.retry_delay_s)

    async def _step(self) -> None:
        if time.monotonic() >= self._next_reclaim:
            self._next_reclaim = time.monotonic() + self._config.reclaim_interval_s
            await self._reclaim()
        room = self._lanes.room()
        if room <= 0:
            await self._lanes.wait_for_room(self._config.block_ms / 1000)
            return
        reply: Any = await self._redis.xreadgroup(
            self.group,
            self.consumer,
            {self.stream: ">"},
            count=min(self._config.batch_size, room),
            block=self._config.block_ms,
        )
        for _stream, entries in reply or ():
            self._lanes.add(Delivery(self.stream, _s(i), f, 1) for i, f in entries)

    async def _attempt(self, delivery: Delivery) -> None:
        """Run one entry: acknowledge it, dead-letter it (poison) or leave it for a retry."""
        target = delivery.fields.get(deadletter.REPLAY_FIELD)
        if target is not None:  # a replayed entry: only for the group it was replayed for
            if target.decode() != self.group:
                self._acks.add(delivery.entry_id, delivery.deliveries)
                return
            fields = {k: v for k, v in delivery.fields.items() if k != deadletter.REPLAY_FIELD}
            delivery = replace(delivery, fields=fields)
        try:
            await self._handler(delivery)
        except PoisonMessage as e:
            await self._dead_letter_poison(delivery, f"poison: {e}")
        except Exception as e:
            await self._failed(delivery, f"{type(e).__name__}: {e}")
        else:
            self._acks.add(delivery.entry_id, delivery.deliveries)

    async def _failed(self, delivery: Delivery, error: str) -> None:
        log.exception(
            "handler_failed",
            stream=self.stream,
            entry=delivery.entry_id,
            deliveries=delivery.deliveries,
        )
        try:
            await self._failures.record(delivery.entry_id, delivery.deliveries, error)
        except RedisError as e:  # retried after `claim_idle_ms` instead of its pause
            log.warning("failure_not_recorded", stream=self.stream, error=str(e))

    async def _reclaim(self) -> None:
        """Claim what is due for another attempt (or the dead-letter stream) and run it."""
        due = await retry.due(
            self._redis,
            self.stream,
            self.group,
            policy=self._policy,
            failures=self._failures,
            skip=self._lanes.in_hand | self._acks.waiting,
            count=self._config.batch_size,
        )
        if not due:
            return
        least = min(wait for _, wait, _ in due.values())
        claimed: Any = await self._redis.xclaim(
            self.stream, self.group, self.consumer, least, list(due)
        )
        now_ms = await self._redis_time_ms()
        again = []
        for raw_id, fields in claimed:
            if fields is None:  # trimmed or deleted meanwhile
                continue
            entry_id = _s(raw_id)
            deliveries, _, failure = due[entry_id]
            failure = failure or await self._unacknowledged(entry_id, deliveries)
            delivery = Delivery(self.stream, entry_id, fields, deliveries + 1)
            if self._policy.exhausted(failure, deliveries, now_ms):
                await self._dead_letter_entry(
                    replace(delivery, deliveries=deliveries), failure.error, failure.first_ms
                )
            else:
                again.append(delivery)
        if again:
            log.info("runner_reclaimed", stream=self.stream, count=len(again))
            self._lanes.add(again)

    async def _unacknowledged(self, entry_id: str, deliveries: int) -> Failure:
        """The record of an entry whose consumer went away without acknowledging or failing it
        (a crash counts as a failure: an entry that kills its consumer is dead-lettered too)."""
        error = f"delivery {deliveries} was never acknowledged (its consumer went away)"
        first_ms = await self._failures.record(entry_id, deliveries, error)
        return Failure(first_ms, deliveries, error)

    async def _dead_letter_poison(self, delivery: Delivery, error: str) -> None:
        known = await self._failures.read([delivery.entry_id])
        first = known[delivery.entry_id].first_ms if known else await self._redis_time_ms()
        await self._dead_letter_entry(delivery, error, first)

    async def _dead_letter_entry(self, delivery: Delivery, error: str, first_ms: int) -> None:
        written = deadletter.record(
            stream=self.stream,
            group=self.group,
            entry_id=delivery.entry_id,
            deliveries=delivery.deliveries,
            error=error,
            consumer=self.consumer,
            first_failure_ms=first_ms,
            fields=delivery.fields,
        )
        await deadletter.send(
            self._redis,
            self._dead_letter,
            written,
            failures_key=self._failures.key,
            maxlen=self._config.dead_letter_maxlen,
        )
        self.dead_lettered += 1
        log.error(
            "message_dead_lettered",
            stream=self.stream,
            group=self.group,
            entry=delivery.entry_id,
            deliveries=delivery.deliveries,
            error=error,
        )

    async def _redis_time_ms(self) -> int:
        seconds, micros = await self._redis.time()
        return int(seconds) * 1000 + int(micros) // 1000

    async def _ensure_group_safely(self) -> None:
        while True:
            try:
                await ensure_group(self._redis, self.stream, self.group)
                return
            except (RedisConnectionError, RedisTimeoutError, OSError) as e:
                log.warning("runner_redis_unavailable", stream=self.stream, error=str(e))
                await asyncio.sleep(self._config.retry_delay_s)

    async def _leave(self) -> None:
        """Remove this consumer from the group if it holds nothing pending."""
        try:
            mine = await self._redis.xpending_range(
                self.stream, self.group, "-", "+", 1, consumername=self.consumer
            )
            if not mine:
                await self._redis.xgroup_delconsumer(self.stream, self.group, self.consumer)
        except (ResponseError, RedisConnectionError, OSError) as e:
            log.warning("runner_leave_failed", stream=self.stream, error=str(e))


async def ensure_group(redis: Redis, stream: str, group: str) -> None:
    """Create the group (and the stream) reading from the start, unless it exists."""
    try:
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as e:
        if "BUSYGROUP" not in str(e):
            raise


def _lost_stream_or_group(error: ResponseError) -> bool:
    """Redis lost the stream or the group (data loss, or a key deleted while we were blocked)."""
    text = str(error)
    return text.startswith("NOGROUP") or "no longer exists" in text


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
