"""Acknowledging handled entries as they finish: the entries of one group finished at about the
same time go in one `XACK`, with the removal of the retry records of those that had failed."""

from __future__ import annotations

import asyncio

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

log = structlog.get_logger(__name__)


class Acks:
    def __init__(self, redis: Redis, stream: str, group: str, failures_key: str) -> None:
        self._redis, self._stream, self._group = redis, stream, group
        self._failures_key = failures_key
        self._ids: list[str] = []
        self._retried: list[str] = []
        self._flushing: asyncio.Task[None] | None = None
        self.waiting: set[str] = set()  # handled, not acknowledged yet: not to be reclaimed
        self.acknowledged = 0

    def add(self, entry_id: str, deliveries: int) -> None:
        """Acknowledge `entry_id` soon (with any others added before that happens)."""
        self._ids.append(entry_id)
        self.waiting.add(entry_id)
        if deliveries > 1:
            self._retried.append(entry_id)
        if self._flushing is None:
            self._flushing = asyncio.create_task(self._flush())

    async def flush(self) -> None:
        """Wait until everything added so far was sent."""
        while self._flushing is not None:
            await self._flushing

    async def _flush(self) -> None:
        try:
            while self._ids:
                ids, retried = self._ids, self._retried
                self._ids, self._retried = [], []
                await self._send(ids, retried)
        finally:
            self._flushing = None

    async def _send(self, ids: list[str], retried: list[str]) -> None:
        try:
            await self._ack(ids, retried)
        finally:
            self.waiting.difference_update(ids)

    async def _ack(self, ids: list[str], retried: list[str]) -> None:
        try:
            if retried:
                async with self._redis.pipeline(transaction=False) as pipe:
                    pipe.xack(self._stream, self._group, *ids)
                    pipe.hdel(self._failures_key, *retried)
                    await pipe.execute()
            else:  # the usual case: one command, without a pipeline's own cost
                await self._redis.xack(self._stream, self._group, *ids)
        except (RedisError, OSError) as e:  # they stay pending: redelivered, and deduped
            log.warning("ack_failed", stream=self._stream, entries=len(ids), error=str(e))
            return
        self.acknowledged += len(ids)
