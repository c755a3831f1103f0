"""The outbox relay: moves committed events from PostgreSQL onto their Redis streams.

One relay leads at a time (a PostgreSQL advisory lock held by its listening connection); every
service process runs one, so publishing goes on while any service is up. An event committed to
PostgreSQL reaches Redis even if its writer died right after the commit, because the relay reads
the outbox table, not the writer's memory. Publishing is at least once: a relay that dies
between XADD and deleting the outbox rows (or whose deletion was not yet flushed to disk when
PostgreSQL stopped) publishes those rows again, and consumers dedupe.

If Redis lost its data (the epoch key is gone), the relay first republishes the events of the
last `replay_window_s` seconds, so consumers that had not yet read them still get them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
import psycopg
import structlog
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from libs.events.codec import ENVELOPE_FIELD
from libs.events.store import OUTBOX_CHANNEL
from libs.events.streams import bus_epoch_key, stream_for

log = structlog.get_logger(__name__)

RELAY_LOCK = 0x72656C6179  # "relay"

# Both lookups go by primary key (`= ANY(array)`), whatever the planner believes about the
# tables' sizes: written as a join, the plan read all of `events` for every batch once the
# outbox's statistics said it was small (1-2 s a batch at 60,000 events, growing with them).
_TAKE_PENDING = """
WITH taken AS (
    DELETE FROM outbox
    WHERE position = ANY(ARRAY(SELECT position FROM outbox ORDER BY position LIMIT %s))
    RETURNING position
)
SELECT e.position, e.stream_id, e.event_id, e.version, e.recorded_at, e.correlation_id,
       e.data::text
FROM events e
WHERE e.position = ANY(ARRAY(SELECT position FROM taken))
ORDER BY e.position
"""
# The relay's own transactions only delete published rows from the outbox: one lost in a crash
# publishes those rows again, which consumers dedupe, so they need not wait for the WAL flush.
_NO_FLUSH_WAIT = "SET synchronous_commit = off"
_RECENT = """
SELECT e.position, e.stream_id, e.event_id, e.version, e.recorded_at, e.correlation_id,
       e.data::text
FROM events e
WHERE e.recorded_at > now() - make_interval(secs => %s) AND e.position < %s
  AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.position = e.position)
ORDER BY e.position
"""


class WireEnvelope(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """The published form of `catalogue.Envelope`, built from a row without decoding the event."""

    event_id: str
    stream_id: str
    version: int
    position: int
    recorded_at: datetime
    correlation_id: str | None
    event: msgspec.Raw


_encoder = msgspec.json.Encoder()


@dataclass(frozen=True)
class RelayConfig:
    batch_size: int = 500
    poll_interval_s: float = 1.0
    replay_window_s: float = 60.0
    retry_delay_s: float = 1.0
    vacuum_after_rows: int = 2000


def wire_entry(row: Sequence[Any]) -> bytes:
    position, stream_id, event_id, version, recorded_at, correlation_id, data = row
    return _encoder.encode(
        WireEnvelope(
            event_id=str(event_id),
            stream_id=stream_id,
            version=version,
            position=position,
            recorded_at=recorded_at,
            correlation_id=correlation_id,
            event=msgspec.Raw(data.encode()),
        )
    )


# KEYS[1] is the epoch key, KEYS[2..] the target streams; ARGV the entries, one per stream key.
# Publishes nothing and answers 0 when the epoch key is gone (Redis lost its data), so the relay
# republishes older events first and per-stream order holds.
_PUBLISH_IF_EPOCH = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for i = 2, #KEYS do redis.call('XADD', KEYS[i], '*', 'envelope', ARGV[i - 1]) end
return 1
"""


async def publish_rows(redis: Redis, prefix: str, rows: Sequence[Sequence[Any]]) -> None:
    """XADD each row to its category stream, in order, in one round trip."""
    async with redis.pipeline(transaction=False) as pipe:
        for row in rows:
            pipe.xadd(stream_for(prefix, row[1]), {ENVELOPE_FIELD: wire_entry(row)})
        await pipe.execute()


async def publish_if_epoch(script: AsyncScript, prefix: str, rows: Sequence[Sequence[Any]]) -> bool:
    """Publish `rows` atomically unless Redis lost its data since the epoch was set."""
    keys = [bus_epoch_key(prefix), *(stream_for(prefix, row[1]) for row in rows)]
    return bool(await script(keys=keys, args=[wire_entry(row) for row in rows]))


class OutboxRelay:
    """Publishes the outbox while it holds the relay lock; stands by otherwise."""

    def __init__(
        self, database_url: str, redis: Redis, prefix: str, config: RelayConfig | None = None
    ) -> None:
        self._database_url = database_url
        self._redis = redis
        self._prefix = prefix
        self._config = config or RelayConfig()
        self._wake = asyncio.Event()
        self._publish = redis.register_script(_PUBLISH_IF_EPOCH)
        self.published = 0
        self._removed = 0  # rows deleted from the outbox since this relay last vacuumed it
        self._vacuuming: asyncio.Task[None] | None = None
        self._next_epoch_check = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        """Lead when possible, until `stop` is set; survive database and Redis outages."""
        while not stop.is_set():
            try:
                await self._lead(stop)
            except (psycopg.Error, OSError, ConnectionError) as e:
                log.warning("relay_interrupted", error=str(e))
            except Exception as e:  # redis errors and anything unexpected: log, retry
                log.exception("relay_failed", error=str(e))
            await _wait(stop, self._config.retry_delay_s)

    async def _lead(self, stop: asyncio.Event) -> None:
        """On one connection: wait for the relay lock (checking every `retry_delay_s`), then
        LISTEN and publish until stopped. Standing by costs one idle connection."""
        async with await psycopg.AsyncConnection.connect(
            self._database_url, autocommit=True
        ) as listener:
            while not await _try_lock(listener):
                await _wait(stop, self._config.retry_delay_s)
                if stop.is_set():
                    return
            log.info("relay_leading")
            await listener.execute(f"LISTEN {OUTBOX_CHANNEL}")
            async with await psycopg.AsyncConnection.connect(
                self._database_url, autocommit=True
            ) as worker:
                await worker.execute(_NO_FLUSH_WAIT)
                listening = asyncio.create_task(self._listen(listener))
                try:
                    await self._drain_until(stop, worker, listening)
                finally:
                    for task in (listening, self._vacuuming):
                        if task is not None:
                            task.cancel()
                            with contextlib.suppress(asyncio.CancelledError, psycopg.Error):
                                await task

    async def _listen(self, listener: psycopg.AsyncConnection[Any]) -> None:
        async for _ in listener.notifies():
            self._wake.set()

    async def _drain_until(
        self,
        stop: asyncio.Event,
        worker: psycopg.AsyncConnection[Any],
        listening: asyncio.Task[None],
    ) -> None:
        while not stop.is_set():
            if listening.done():
                listening.result()  # re-raise why the listener stopped
                raise ConnectionError("relay listener stopped")
            self._wake.clear()
            if time.monotonic() >= self._next_epoch_check:  # else publishing checks it anyway
                await self._replay_if_redis_lost(worker)
                self._next_epoch_check = time.monotonic() + self._config.poll_interval_s
            while await self._publish_batch(worker) == self._config.batch_size:
                pass
            if self._removed >= self._config.vacuum_after_rows and self._vacuuming is None:
                self._removed = 0
                self._vacuuming = asyncio.create_task(self._vacuum())
                self._vacuuming.add_done_callback(self._vacuumed)
            await _wait_any(stop, self._wake, self._config.poll_interval_s)

    async def _publish_batch(self, worker: psycopg.AsyncConnection[Any]) -> int:
        """Take a batch off the outbox and publish it; the removal commits only if it was sent.
        In pipeline mode, `BEGIN` goes out with the removal: one round trip fewer per batch."""
        async with worker.pipeline(), worker.transaction():
            cur = await worker.execute(_TAKE_PENDING, (self._config.batch_size,), prepare=True)
            rows = await cur.fetchall()
            while rows and not await publish_if_epoch(self._publish, self._prefix, rows):
                await self._replay_if_redis_lost(worker, below=rows[0][0])
        self.published += len(rows)
        self._removed += len(rows)
        return len(rows)

    async def _vacuum(self) -> None:
        """Clear the outbox's deleted rows, on a connection of its own so that publishing goes
        on meanwhile. The relay takes the lowest positions first, so an index scan would
        otherwise walk every row deleted since the last vacuum (autovacuum comes at most once a
        minute): at 1,000 events/s taking a batch grew from 1 ms to 6 ms within 7 s."""
        async with await psycopg.AsyncConnection.connect(
            self._database_url, autocommit=True
        ) as conn:
            await conn.execute("VACUUM (SKIP_LOCKED) outbox")

    def _vacuumed(self, task: asyncio.Task[None]) -> None:
        self._vacuuming = None
        if not task.cancelled() and task.exception() is not None:
            log.warning("outbox_vacuum_failed", error=repr(task.exception()))

    async def _replay_if_redis_lost(
        self, worker: psycopg.AsyncConnection[Any], below: int = 2**63 - 1
    ) -> None:
        """Republish recent published events (positions under `below`) if Redis lost its data."""
        key = bus_epoch_key(self._prefix)
        if await self._redis.exists(key):
            return
        cur = await worker.execute(_RECENT, (self._config.replay_window_s, below))
        rows = await cur.fetchall()
        for start in range(0, len(rows), self._config.batch_size):
            await publish_rows(
                self._redis, self._prefix, rows[start : start + self._config.batch_size]
            )
        await self._redis.set(key, "1")
        log.info("relay_epoch_started", republished=len(rows))


async def _try_lock(conn: psycopg.AsyncConnection[Any]) -> bool:
    cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (RELAY_LOCK,))
    row = await cur.fetchone()
    return bool(row and row[0])


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def _wait_any(stop: asyncio.Event, wake: asyncio.Event, seconds: float) -> None:
    waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(wake.wait())]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
