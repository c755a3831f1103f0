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
  key (docs/architecture.md, "Events and consumers"), unless `hold_key_on_failure`: then it is
  retried in place, with the same pauses, while they wait (a group with one consumer only).
- Entries left pending longer than `claim_idle_ms` by another consumer (it died) are claimed.
- A missing stream or group (Redis lost its data) is recreated and reading goes on.
- On stop every entry in hand is finished and acknowledged; nothing read is abandoned, except a
  held key's failed entry and those behind it, left pending (unacknowledged) for the next consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from libs.events import deadletter, retry
from libs.events.acks import Acks
from libs.events.delivery import Delivery, PoisonMessage
from libs.events.lanes import Lanes
from libs.events.retry import Failure, Failures, RetryPolicy

__all__ = [
    "Delivery",
    "Handler",
    "KeyOf",
    "PoisonMessage",
    "RunnerConfig",
    "StreamRunner",
    "by_entry",
    "ensure_group",
    "retry_policy",
]

log = structlog.get_logger(__name__)

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
    # Retry a failed entry in place while the later entries of its key wait, rather than by the
    # reclaim while they run; the reclaim then claims whatever is pending at once, oldest first,
    # before newer entries are read. Sound for a group with one consumer only (`claim_idle_ms=0`).
    hold_key_on_failure: bool = False


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
        hold = self._config.hold_key_on_failure
        self._claim_policy = replace(self._policy, first_pause_s=0.0) if hold else self._policy
        self._failures = Failures(redis, stream, group)
        self._acks = Acks(redis, stream, group, self._failures.key)
        limit = self._config.max_in_flight or 2 * self._config.batch_size
        self._lanes = Lanes(self._attempt, key, limit)
        self._next_reclaim = 0.0
        self._stop = asyncio.Event()
        self.dead_lettered = 0

    @property
    def handled(self) -> int:
        return self._acks.acknowledged

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set, surviving Redis outages and data loss."""
        log.info("runner_started", stream=self.stream, group=self.group, consumer=self.consumer)
        self._stop = stop
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
        except (RedisConnectionError, RedisTimeoutError, ReadOnlyError, OSError) as e:
            # ReadOnlyError: a replica answering during a failover, until it is promoted.
            log.warning("runner_redis_unavailable", stream=self.stream, error=str(e))
            await asyncio.sleep(self._config.retry_delay_s)

    async def _step(self) -> None:
        if time.monotonic() >= self._next_reclaim:
            self._next_reclaim = time.monotonic() + self._config.reclaim_interval_s
            if await self._reclaim() and self._config.hold_key_on_failure:
                self._next_reclaim = 0.0  # claim the rest of the pending before newer entries
                return
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

    async def _attempt(self, delivery: Delivery) -> bool:
        """Run one entry: acknowledge it, dead-letter it (poison) or leave it for a retry (with
        `hold_key_on_failure`, retry it here). False: its key stops here, since it failed and the
        runner is stopping."""
        target = delivery.fields.get(deadletter.REPLAY_FIELD)
        if target is not None:  # a replayed entry: only for the group it was replayed for
            if target.decode() != self.group:
                self._acks.add(delivery.entry_id, delivery.deliveries)
                return True
            fields = {k: v for k, v in delivery.fields.items() if k != deadletter.REPLAY_FIELD}
            delivery = replace(delivery, fields=fields)  # the same message: its memo stays
        error = await self._handle(delivery)
        if error is None:
            return True
        if self._config.hold_key_on_failure:
            return await self._hold(delivery, error)
        await self._record_failure(delivery, error)
        return True

    async def _handle(self, delivery: Delivery) -> str | None:
        """Run the handler; None once the entry is done with (acknowledged, or dead-lettered as
        poison), else the error."""
        try:
            await self._handler(delivery)
        except PoisonMessage as e:
            try:
                await self._dead_letter_poison(delivery, f"poison: {e}")
            except (RedisError, OSError) as failed:  # retried, and dead-lettered then
                return f"poison, not dead-lettered: {failed}"
        except Exception as e:
            log.exception(
                "handler_failed",
                stream=self.stream,
                entry=delivery.entry_id,
                deliveries=delivery.deliveries,
            )
            return f"{type(e).__name__}: {e}"
        else:
            self._acks.add(delivery.entry_id, delivery.deliveries)
        return None

    async def _record_failure(self, delivery: Delivery, error: str) -> int | None:
        """Note the failed delivery (`retry.py`); when the entry first failed (ms, by Redis's
        clock), None if Redis did not answer."""
        try:
            return await self._failures.record(delivery.entry_id, delivery.deliveries, error)
        except RedisError as e:  # retried after `claim_idle_ms` instead of its pause
            log.warning("failure_not_recorded", stream=self.stream, error=str(e))
            return None

    async def _hold(self, delivery: Delivery, error: str) -> bool:
        """Retry a failed entry in place, after the pauses of `retry.py`, while the later entries
        of its key wait: True once it succeeded or went to the dead-letter stream, False if the
        runner stops first (it and the entries behind it stay pending, for the next consumer)."""
        with self._lanes.holding(delivery):
            return await self._retry_in_place(delivery, error)

    async def _retry_in_place(self, delivery: Delivery, error: str | None) -> bool:
        cfg = self._config
        while error is not None:
            first_ms = await self._record_failure(delivery, error)
            pause = retry.pause_s(
                delivery.deliveries, cfg.retry_first_pause_s, cfg.retry_max_pause_s
            )
            if await self._stopped_within(pause):
                log.info("key_held_at_stop", stream=self.stream, entry=delivery.entry_id)
                return False
            try:
                if first_ms is not None and await self._exhausted(first_ms, delivery.deliveries):
                    await self._dead_letter_entry(delivery, error, first_ms)
                    return True
            except (RedisError, OSError) as e:  # the entry stays: try again after the pause
                log.warning("dead_letter_failed", stream=self.stream, error=str(e))
                continue
            delivery = await self._redelivered(delivery)
            error = await self._handle(delivery)
        return True

    async def _stopped_within(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)
        return self._stop.is_set()

    async def _exhausted(self, first_ms: int, deliveries: int) -> bool:
        if deliveries < self._config.max_deliveries:
            return False
        failure = Failure(first_ms, deliveries, "")
        return self._policy.exhausted(failure, deliveries, await self._redis_time_ms())

    async def _redelivered(self, delivery: Delivery) -> Delivery:
        """The next delivery of an entry retried in place: claimed again, so the group counts it
        (and a next consumer sees how often it was tried)."""
        try:
            await self._redis.xclaim(self.stream, self.group, self.consumer, 0, [delivery.entry_id])
        except (RedisError, OSError) as e:  # Redis lost the group, or is away: run it anyway
            log.warning("redelivery_not_counted", stream=self.stream, error=str(e))
        return replace(delivery, deliveries=delivery.deliveries + 1)

    async def _reclaim(self) -> int:
        """Claim what is due for another attempt (or the dead-letter stream) and run it; how
        many entries it took. (Holding keys, whatever is pending is due at once, oldest first.)"""
        due = await retry.due(
            self._redis,
            self.stream,
            self.group,
            policy=self._claim_policy,
            failures=self._failures,
            skip=self._lanes.in_hand | self._acks.waiting,
            count=self._config.batch_size,
        )
        if not due:
            return 0
        least = min(wait for _, wait, _ in due.values())
        claimed: Any = await self._redis.xclaim(
            self.stream, self.group, self.consumer, least, list(due)
        )
        now_ms = await self._redis_time_ms()
        again, gone = [], 0
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
                gone += 1
            else:
                again.append(delivery)
        if again:
            log.info("runner_reclaimed", stream=self.stream, count=len(again))
            self._lanes.add(again)
        return len(again) + gone

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
