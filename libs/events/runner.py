"""The consumer-group runner: reads a Redis stream as one consumer of a group.

- `XREADGROUP` new entries, run the handler, `XACK` only after it returned (its work committed).
- Entries with the same key (by default the event's stream id) run in order; different keys run
  side by side within a batch. A handler sees the entries of its key still to come in the batch
  (`Delivery.later`), so it may skip work a later entry makes moot.
- Entries left pending longer than `claim_idle_ms` (their consumer died, or the handler failed)
  are claimed and run again; after `max_deliveries` attempts an entry goes to the dead-letter
  stream with its last error and is acknowledged, so a poison message never stalls the group.
- A missing stream or group (Redis lost its data) is recreated and reading goes on.
- On stop the batch in hand is finished and acknowledged; nothing is abandoned mid-way except
  entries never started, which stay pending for another consumer to claim.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = structlog.get_logger(__name__)


class PoisonMessage(Exception):
    """Raised by a handler for an entry that can never succeed: dead-letter it at once."""


@dataclass(frozen=True)
class Delivery:
    stream: str
    entry_id: str
    fields: dict[bytes, bytes]
    deliveries: int
    # The entries with the same key after this one in its batch, in the order they will run.
    later: tuple[Delivery, ...] = ()


Handler = Callable[[Delivery], Awaitable[None]]
KeyOf = Callable[[Delivery], str]


@dataclass(frozen=True)
class RunnerConfig:
    batch_size: int = 100
    block_ms: int = 1000
    claim_idle_ms: int = 30_000
    reclaim_interval_s: float = 5.0
    max_deliveries: int = 5
    retry_delay_s: float = 1.0
    dead_letter_maxlen: int = 10_000


def by_entry(delivery: Delivery) -> str:
    return delivery.entry_id


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
        self._key = key
        self._errors: dict[str, str] = {}
        self._next_reclaim = 0.0
        self.handled = 0
        self.dead_lettered = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set, surviving Redis outages and data loss."""
        log.info("runner_started", stream=self.stream, group=self.group, consumer=self.consumer)
        await self._ensure_group_safely()
        while not stop.is_set():
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
        await self._leave()
        log.info("runner_stopped", stream=self.stream, group=self.group, handled=self.handled)

    async def _step(self) -> None:
        if time.monotonic() >= self._next_reclaim:
            self._next_reclaim = time.monotonic() + self._config.reclaim_interval_s
            await self._reclaim()
        reply: Any = await self._redis.xreadgroup(
            self.group,
            self.consumer,
            {self.stream: ">"},
            count=self._config.batch_size,
            block=self._config.block_ms,
        )
        for _stream, entries in reply or ():
            await self._run_batch([Delivery(self.stream, _s(i), f, 1) for i, f in entries])

    async def _run_batch(self, batch: Sequence[Delivery]) -> None:
        groups: dict[str, list[Delivery]] = defaultdict(list)
        for delivery in batch:
            groups[self._key(delivery)].append(delivery)
        outcomes = await asyncio.gather(
            *(self._run_in_order(_with_later(g)) for g in groups.values())
        )
        done = [entry for outcome in outcomes for entry in outcome]
        if done:
            await self._redis.xack(self.stream, self.group, *done)
            self.handled += len(done)

    async def _run_in_order(self, deliveries: list[Delivery]) -> list[str]:
        done = []
        for delivery in deliveries:
            if await self._attempt(delivery):
                done.append(delivery.entry_id)
        return done

    async def _attempt(self, delivery: Delivery) -> bool:
        try:
            await self._handler(delivery)
        except PoisonMessage as e:
            await self._dead_letter_entry(delivery, f"poison: {e}")
            return False
        except Exception as e:
            self._errors[delivery.entry_id] = f"{type(e).__name__}: {e}"
            log.exception(
                "handler_failed",
                stream=self.stream,
                entry=delivery.entry_id,
                deliveries=delivery.deliveries,
            )
            if delivery.deliveries >= self._config.max_deliveries:
                await self._dead_letter_entry(delivery, self._errors[delivery.entry_id])
            return False
        self._errors.pop(delivery.entry_id, None)
        return True

    async def _reclaim(self) -> None:
        pending: Any = await self._redis.xpending_range(
            self.stream,
            self.group,
            "-",
            "+",
            self._config.batch_size,
            idle=self._config.claim_idle_ms,
        )
        if not pending:
            return
        exhausted = [p for p in pending if p["times_delivered"] >= self._config.max_deliveries]
        for p in exhausted:
            await self._dead_letter_id(_s(p["message_id"]), p["times_delivered"])
        retry = {_s(p["message_id"]): p["times_delivered"] for p in pending if p not in exhausted}
        if retry:
            await self._claim_and_run(retry)

    async def _claim_and_run(self, retry: dict[str, int]) -> None:
        claimed: Any = await self._redis.xclaim(
            self.stream, self.group, self.consumer, self._config.claim_idle_ms, list(retry)
        )
        batch = [
            Delivery(self.stream, _s(i), f, retry[_s(i)] + 1) for i, f in claimed if f is not None
        ]
        if batch:
            log.info("runner_reclaimed", stream=self.stream, count=len(batch))
            await self._run_batch(batch)

    async def _dead_letter_id(self, entry_id: str, deliveries: int) -> None:
        entries: Any = await self._redis.xrange(self.stream, entry_id, entry_id)
        fields = entries[0][1] if entries else {}
        error = self._errors.get(entry_id, "delivery limit reached without an acknowledgement")
        await self._dead_letter_entry(Delivery(self.stream, entry_id, fields, deliveries), error)

    async def _dead_letter_entry(self, delivery: Delivery, error: str) -> None:
        record: dict[Any, Any] = {
            "stream": self.stream,
            "group": self.group,
            "entryId": delivery.entry_id,
            "deliveries": delivery.deliveries,
            "error": error[:2000],
            "consumer": self.consumer,
        }
        record.update({b"field:" + k: v for k, v in delivery.fields.items()})
        await self._redis.xadd(
            self._dead_letter, record, maxlen=self._config.dead_letter_maxlen, approximate=True
        )
        await self._redis.xack(self.stream, self.group, delivery.entry_id)
        self._errors.pop(delivery.entry_id, None)
        self.dead_lettered += 1
        log.error(
            "message_dead_lettered",
            stream=self.stream,
            group=self.group,
            entry=delivery.entry_id,
            deliveries=delivery.deliveries,
            error=error,
        )

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


def _with_later(group: list[Delivery]) -> list[Delivery]:
    """The group's deliveries, each knowing the ones after it (`Delivery.later`)."""
    done: list[Delivery] = []
    later: tuple[Delivery, ...] = ()
    for delivery in reversed(group):
        knowing = replace(delivery, later=later)
        later = (knowing, *later)
        done.append(knowing)
    done.reverse()
    return done


def _lost_stream_or_group(error: ResponseError) -> bool:
    """Redis lost the stream or the group (data loss, or a key deleted while we were blocked)."""
    text = str(error)
    return text.startswith("NOGROUP") or "no longer exists" in text


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
