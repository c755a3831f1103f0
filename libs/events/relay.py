"""The outbox relay: moves committed events from PostgreSQL onto their Redis streams.

One relay publishes at a time, the holder of the `relay` lease (`lease.py`); every service
process runs one and the others stand by, so publishing goes on while any service is up, and
moves within seconds when the holder dies, freezes or is cut off. Each batch it writes to Redis
carries the lease's token (`publish.py`), so a holder that froze and woke up writes nothing.

An event committed to PostgreSQL reaches Redis even if its writer died right after the commit,
because the relay reads the outbox table, not the writer's memory. Publishing is at least once:
a relay that dies between XADD and its commit publishes those rows again; consumers dedupe.

Redis losing data is noticed before every batch (inside the publish script) and every poll
interval, and repaired before anything new is published, so per-stream order holds:
- all of it (the epoch is gone): a new epoch starts with every event of the last
  `replay_window_s` seconds that already left the outbox, whatever order they committed in;
- only its newest writes (Redis holds fewer batches than `relay_log` says): the logged batches
  after the ones Redis holds are published again, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from libs.events import outbox
from libs.events.lease import Held, Lease, LeaseConfig, LeaseLost, redis_answers
from libs.events.metrics import OUTBOX_AGE, OUTBOX_ROWS
from libs.events.publish import Outcome, Publisher, RedisState
from libs.events.store import OUTBOX_CHANNEL
from libs.events.streams import first_mark

log = structlog.get_logger(__name__)

RELAY_ROLE = "relay"
Conn = psycopg.AsyncConnection[Any]


@dataclass(frozen=True)
class RelayConfig:
    batch_size: int = 500
    poll_interval_s: float = 1.0
    replay_window_s: float = 60.0
    vacuum_after_rows: int = 2000
    # Found nothing while writers commit (they hold the wake-up lock and do not notify): look
    # again after this pause, doubled each time up to `max_pause_s`.
    busy_pause_s: float = 0.001
    max_pause_s: float = 0.02
    free_lock_rows: int = 3  # a batch this large: writers commit often, stop them notifying
    log_retention_s: float = 900.0  # how far back a loss of Redis's newest writes is repaired
    lease: LeaseConfig = field(default_factory=LeaseConfig)


class _Diverged(Exception):
    """Redis no longer holds what this relay published: resynchronise, then go on."""


class OutboxRelay:
    """Publishes the outbox while it holds the relay lease; stands by otherwise."""

    def __init__(
        self,
        database_url: str,
        redis: Redis,
        prefix: str,
        config: RelayConfig | None = None,
        *,
        pool: AsyncConnectionPool[Any],
        holder: str,
    ) -> None:
        self._database_url, self._redis = database_url, redis
        self._config = config or RelayConfig()
        self._publisher = Publisher(redis, prefix)
        self._lease = Lease(
            pool, RELAY_ROLE, holder, config=self._config.lease, healthy=redis_answers(redis)
        )
        self._wake = asyncio.Event()
        self._epoch, self._count = "", 0  # the Redis epoch published to, and its batch count
        self.published = 0
        self.looks = 0  # batches taken off the outbox, empty ones included
        self._removed = 0  # rows deleted from the outbox since this relay last vacuumed it
        self._vacuuming: asyncio.Task[None] | None = None
        self._next_check = 0.0
        self._asleep = False  # holds the wake-up lock: writers notify their commits

    async def run(self, stop: asyncio.Event) -> None:
        """Publish whenever this process holds the lease, until `stop` is set."""
        await self._lease.hold_forever(self._lead, stop)

    async def _lead(self, held: Held) -> None:
        """LISTEN on one connection and publish on another, while the lease lasts. The
        publishing connection's transactions end within the lease's time even when this
        process freezes mid-way (`idle_in_transaction_session_timeout`): its rows are then
        free for the next holder."""
        idle_ms = int(self._config.lease.ttl_s * 1000)
        connect = psycopg.AsyncConnection.connect
        async with (
            await connect(self._database_url, autocommit=True) as listener,
            await connect(self._database_url, autocommit=True) as worker,
        ):
            await worker.execute("SET synchronous_commit = off")  # see _publish_batch
            await worker.execute(f"SET idle_in_transaction_session_timeout = {idle_ms}")
            await listener.execute(f"LISTEN {OUTBOX_CHANNEL}")
            log.info("relay_leading", token=held.token)
            listening = asyncio.create_task(self._listen(listener))
            try:
                await self._sync(worker, held)
                await self._drain(worker, held, listening)
            finally:
                for task in (listening, self._vacuuming):
                    if task is not None:
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError, psycopg.Error):
                            await task
                # Only the holder measures the outbox: a former one's last figures would stay on
                # its `/metrics` (and an alarm on them) for as long as it runs.
                OUTBOX_ROWS.set(0)
                OUTBOX_AGE.set(0.0)

    async def _listen(self, listener: Conn) -> None:
        async for _ in listener.notifies():
            self._wake.set()

    async def _drain(self, worker: Conn, held: Held, listening: asyncio.Task[None]) -> None:
        """Publish batch after batch while the outbox has rows, in one of two ways:
        - holding the wake-up lock (`outbox.WAKE_LOCK`), writers notify their commits: after a
          batch that was not full, wait for a notification;
        - with the lock free, they do not (under load, that saves each commit a wait for the
          commits before it, `outbox.py`): look again at once after a batch with rows, after a
          short pause after an empty one, and take the lock with the look after that.
        The lock is freed with the look after one that found `free_lock_rows` rows or more, or
        after a sleep that no notification ended (so that no sleeper holds it for long)."""
        cfg = self._config
        self._asleep, change, pause = False, False, 0.0
        ending = asyncio.create_task(_wake_when(held.ended, self._wake))
        try:
            while held.valid():
                if listening.done():
                    listening.result()  # re-raise why the listener stopped
                    raise ConnectionError("relay listener stopped")
                self._wake.clear()
                if time.monotonic() >= self._next_check:  # else publishing checks it anyway
                    await self._check(worker, held)
                    self._next_check = time.monotonic() + self._config.poll_interval_s
                found = await self._publish_batch(worker, held, change)
                if self._removed >= self._config.vacuum_after_rows and self._vacuuming is None:
                    self._removed = 0
                    self._vacuuming = asyncio.create_task(self._vacuum())
                    self._vacuuming.add_done_callback(self._vacuumed)
                change = await self._rest(found, pause)
                pause = 0.0 if found else _next_pause(pause, cfg)
        finally:
            ending.cancel()

    async def _rest(self, found: int, pause: float) -> bool:
        """Wait, if need be, after a look that found `found` rows; whether the next look changes
        the wake-up lock."""
        cfg = self._config
        if self._asleep:
            if found >= cfg.free_lock_rows:
                return True
            if found < cfg.batch_size:
                return not await _wait(self._wake, cfg.poll_interval_s)
            return False
        if found:
            return False
        await _wait(self._wake, _next_pause(pause, cfg))
        return True

    async def _publish_batch(self, worker: Conn, held: Held, change: bool) -> int:
        """Take a batch off the outbox and publish it; the removal commits only if it was sent.
        How many rows it found. In pipeline mode, `BEGIN` goes out with the removal, and so does
        the wake-up lock's `change` (taken if free, freed if held): the look after the lock
        was taken sees every commit of the writers that did not notify.
        The transaction only deletes published rows and logs the batch, so it need not wait for
        the WAL flush: one lost in a crash publishes those rows again, which consumers dedupe."""
        try:
            async with worker.pipeline(), worker.transaction():
                locking = await outbox.wake_lock(worker, not self._asleep) if change else None
                rows = await outbox.take_and_log(
                    worker, self._config.batch_size, self._epoch, self._count + 1
                )
                self.looks += 1
                if locking is not None:  # taken (if it answers true), or freed
                    answer = await locking.fetchone()
                    self._asleep = not self._asleep and bool(answer and answer[0])
                if rows:
                    await self._send(worker, held, rows, logged=True)
        except _Diverged:  # the batch's rows went back to the outbox with the rollback
            await self._sync(worker, held)
            return self._config.batch_size  # as for a full batch: look again at once
        self.published += len(rows)
        self._removed += len(rows)
        return len(rows)

    async def _send(
        self, worker: Conn, held: Held, rows: Sequence[outbox.Row], logged: bool = False
    ) -> None:
        """Publish `rows` as the epoch's next batch and log it (in the caller's transaction),
        unless the statement that took them `logged` it already."""
        if not held.valid():
            raise LeaseLost(RELAY_ROLE)
        after = self._count + 1
        outcome, _ = await self._publisher.publish(
            held.token, self._epoch, self._count, after, rows
        )
        if outcome is Outcome.FENCED:
            raise LeaseLost(RELAY_ROLE)
        if outcome is Outcome.DIVERGED:
            raise _Diverged
        if not logged:
            await outbox.log_batch(worker, self._epoch, after, rows)
        self._count = after

    async def _check(self, worker: Conn, held: Held) -> None:
        """Resynchronise if Redis lost data since the last batch; forget old log rows; measure
        the outbox (`/metrics`)."""
        state = await self._publisher.state()
        if state.epoch != self._epoch or state.published < self._count:
            await self._sync(worker, held)
        await outbox.forget_before(worker, self._config.log_retention_s)
        rows, oldest_age_s = await outbox.backlog(worker)
        OUTBOX_ROWS.set(rows)
        OUTBOX_AGE.set(oldest_age_s or 0.0)

    async def _sync(self, worker: Conn, held: Held) -> None:
        """Make Redis hold everything published before: a new epoch with the recent events
        when it holds none, else the logged batches it lost."""
        state = await self._publisher.state()
        if state.epoch is None:
            await self._new_epoch(worker, held)
            return
        self._epoch, self._count = state.epoch, state.published
        lost = await outbox.logged_after(worker, state.epoch, state.published)
        if lost:
            await self._republish(worker, held, state, lost)

    async def _new_epoch(self, worker: Conn, held: Held) -> None:
        # The lease's first holder ever (token 1), before its first epoch: nobody published to
        # Redis for this database before, so Redis lost nothing. Any later epoch is a loss.
        first = held.token == 1 and not self._epoch
        epoch = uuid.uuid4().hex
        if not await self._publisher.start_epoch(held.token, epoch):
            raise LeaseLost(RELAY_ROLE)
        self._epoch, self._count = epoch, 0
        rows = await outbox.recent(worker, self._config.replay_window_s)
        for start in range(0, len(rows), self._config.batch_size):
            await self._send(worker, held, rows[start : start + self._config.batch_size])
        await self._publisher.mark_loss(first_mark(epoch) if first else epoch)
        log.info("relay_epoch_started", epoch=epoch, first=first, republished=len(rows))

    async def _republish(
        self, worker: Conn, held: Held, state: RedisState, lost: list[tuple[int, list[int]]]
    ) -> None:
        """Publish the logged batches Redis lost again, each under its own number."""
        for seq, positions in lost:
            rows = await outbox.at_positions(worker, positions)
            outcome, _ = await self._publisher.publish(
                held.token, self._epoch, self._count, seq, rows
            )
            if outcome is not Outcome.PUBLISHED:
                raise LeaseLost(RELAY_ROLE) if outcome is Outcome.FENCED else _Diverged
            self._count = seq
        await self._publisher.mark_loss(uuid.uuid4().hex)
        log.warning(
            "relay_lost_tail_republished",
            redis_held=state.published,
            batches=len(lost),
            events=sum(len(p) for _, p in lost),
        )

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


def _next_pause(pause: float, config: RelayConfig) -> float:
    return min(max(2 * pause, config.busy_pause_s), config.max_pause_s)


async def _wake_when(ended: asyncio.Event, wake: asyncio.Event) -> None:
    await ended.wait()
    wake.set()


async def _wait(wake: asyncio.Event, seconds: float) -> bool:
    """Until `wake` is set (True), or `seconds` passed (False)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await wake.wait()
    return wake.is_set()
