"""Entries in hand, one lane per ordering key: a key's entries run one after another, different
keys side by side, and no key waits for another.

The runner adds entries as it reads them, from any number of batches; a key's new entries queue
behind the ones of that key still running. Each entry, when it starts, sees the entries of its key
queued behind it (`Delivery.later`). `room()` says how many more entries may be added before
`limit` are in hand; the entries of a key `holding` (its entry failed and is retried in place)
do not count, so that one failing key cannot stall the others. A run that answers False stops its
key: the entries queued behind it, and any of that key added later, are let go without running
(they stay pending in the group).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING

import structlog

if TYPE_CHECKING:
    from libs.events.delivery import Delivery
    from libs.events.runner import KeyOf

log = structlog.get_logger(__name__)


class Lanes:
    def __init__(self, run: Callable[[Delivery], Awaitable[bool]], key: KeyOf, limit: int) -> None:
        self._run, self._key, self._limit = run, key, limit
        self._queues: dict[str, deque[Delivery]] = {}
        self._stopped: set[str] = set()  # keys whose run answered False
        self._held: set[str] = set()  # keys whose running entry is retried in place
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()
        self.in_hand: set[str] = set()  # entry ids added and not finished

    def room(self) -> int:
        held = sum(1 + len(self._queues.get(key, ())) for key in self._held)
        return self._limit - len(self.in_hand) + held

    @contextlib.contextmanager
    def holding(self, delivery: Delivery) -> Iterator[None]:
        """While `delivery` is retried in place, its key's entries do not count in `room()`."""
        key = self._key(delivery)
        self._held.add(key)
        self._changed.set()
        try:
            yield
        finally:
            self._held.discard(key)

    def add(self, deliveries: Iterable[Delivery]) -> None:
        for delivery in deliveries:
            key = self._key(delivery)
            if key in self._stopped:
                continue
            self.in_hand.add(delivery.entry_id)
            queue = self._queues.get(key)
            if queue is not None:
                queue.append(delivery)
                continue
            self._queues[key] = deque([delivery])
            task = asyncio.create_task(self._drain(key))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def wait_for_room(self, timeout_s: float) -> None:
        """Return when an entry finished, or after `timeout_s`."""
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout_s)

    async def finish(self) -> None:
        """Wait until every entry in hand has run."""
        while self._tasks:
            await asyncio.gather(*self._tasks)

    def cancel(self) -> None:
        for task in self._tasks:
            task.cancel()

    async def _drain(self, key: str) -> None:
        queue = self._queues[key]
        try:
            while queue:
                delivery = queue.popleft()
                go_on = True
                try:
                    go_on = await self._run(delivery.with_later(tuple(queue)))
                except Exception:  # the runner's own errors: the entry stays pending
                    log.exception(
                        "entry_run_failed", stream=delivery.stream, entry=delivery.entry_id
                    )
                finally:
                    self.in_hand.discard(delivery.entry_id)
                    self._changed.set()
                if not go_on:
                    self._stop_key(key, queue)
        finally:
            del self._queues[key]

    def _stop_key(self, key: str, queue: deque[Delivery]) -> None:
        self._stopped.add(key)
        self.in_hand.difference_update(d.entry_id for d in queue)
        queue.clear()
