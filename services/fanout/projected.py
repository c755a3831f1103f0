"""Which events the projector delivered, kept in PostgreSQL (`projected_events`, by the event's
position in the store), so that an event the relay publishes again after Redis lost its data, and
with it the inboxes and their delivery marks, reaches nobody a second time (docs/architecture.md,
"Losing Redis").

The projector asks before it delivers an event and records the event once its messages are in
their inboxes; the event is acknowledged only once its record is in the table (`written`). The
records made while one `INSERT` runs go together in the next (with `synchronous_commit` off), on
a connection of the projector's own, so requests that exhaust the shared pool cannot hold them
back. A record PostgreSQL refuses is kept and tried again every `RETRY_WRITE_S`; its event stays
unacknowledged, so the runner holds its stream's later events, and a successor that takes the
lease meanwhile runs it again (the Redis marks keep it from reaching an inbox twice). So at most
the event in hand on each lane, delivered in the milliseconds before its holder is killed, can be
without a record; only Redis losing its data as well would then deliver it twice.

Most events are answered from memory, without a query, by what one lease saw (`Projected` is
made anew for each):
- the events it delivered (the last `REMEMBERED`) were delivered;
- the watermark: the largest position recorded, read when the lease starts, then raised by each
  delivery. An event past it was never delivered (by this holder or any before it, except the
  one a predecessor had in hand, see above). Events committed out of position order, and
  repeats, are at or below it;
- each stream's newest version: the projector runs a stream's events in order, one holder at a
  time (`RUNNER`), so once it delivered version `v`, or the table said `v` was not delivered, no
  later version was delivered before, and from then on it alone delivers that stream: a later
  version is new (for the last `STREAMS_KNOWN` streams).
Other events (a repeat it forgot, an event committed out of position order, one replayed from
the dead-letter stream) are looked up, those asked for together in one `SELECT ... = ANY`.

PostgreSQL failing (after one more try on a fresh connection) fails the event, which the runner
runs again later: its record could not be written either, and after a Redis loss (the marks
gone) taking it as new would deliver it twice. So delivery on that lane waits for PostgreSQL.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from libs.events.catalogue import Envelope

log = structlog.get_logger(__name__)

_DELIVERED = "SELECT position FROM projected_events WHERE position = ANY(%s::bigint[])"
_WATERMARK = "SELECT coalesce(max(position), 0) FROM projected_events"
# One statement: `set_config(..., true)` lasts until the end of its own (implicit) transaction.
_RECORD = """
WITH async_commit AS (SELECT set_config('synchronous_commit', 'off', true))
INSERT INTO projected_events (position)
SELECT unnest(%s::bigint[]) FROM async_commit ON CONFLICT DO NOTHING
"""
_UNAVAILABLE = (psycopg.Error, PoolTimeout, OSError)
STREAMS_KNOWN = 50_000
REMEMBERED = 100_000
RETRY_WRITE_S = 0.5  # after a write PostgreSQL refused
RECORD_WAIT_S = 2.0  # an event waits this long for its record before it is run again later


class RecordNotWritten(Exception):
    """The event's messages are in their inboxes but its record is not yet in PostgreSQL: it is
    not acknowledged (the record is still being tried)."""


class Batched:
    """`run` over the keys asked for meanwhile: one call in flight at a time, the keys asked for
    while it runs go together in the next one. Each caller gets the whole call's answer."""

    def __init__(self, run: Callable[[list[int]], Awaitable[set[int]]]) -> None:
        self._run = run
        self._keys: list[int] = []
        self._next: asyncio.Future[set[int]] | None = None
        self._running: set[asyncio.Task[None]] = set()

    async def __call__(self, keys: Sequence[int]) -> set[int]:
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
            if not self._running:
                asyncio.get_running_loop().call_soon(self._start)
        answer = self._next
        self._keys.extend(keys)
        return await asyncio.shield(answer)  # a caller cancelled cancels only its own wait

    def _start(self) -> None:
        if self._next is None:
            return
        keys, answer = self._keys, self._next
        self._keys, self._next = [], None
        task = asyncio.ensure_future(self._send(keys, answer))
        self._running.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._start()

    async def _send(self, keys: list[int], answer: asyncio.Future[set[int]]) -> None:
        try:
            found = await self._run(keys)
        except Exception as e:
            answer.set_exception(e)
            answer.exception()  # retrieved: every caller raises it, or none was left
        except BaseException:
            answer.cancel()
            raise
        else:
            answer.set_result(found)


class Projected:
    """What the projector delivered, as one holder of its lease sees it."""

    def __init__(self, pool: AsyncConnectionPool[Any], streams_known: int = STREAMS_KNOWN) -> None:
        self._pool = pool
        self._lookup = Batched(self._select)
        self._unwritten: list[int] = []
        self._pending: dict[int, asyncio.Future[None]] = {}  # recorded, not yet in the table
        self._writing: asyncio.Task[None] | None = None
        self._recorded: int | None = None  # the largest position in the table at the start
        self._highest = 0  # the largest position delivered in this lease
        self._reading: asyncio.Task[int] | None = None
        self._remembered: OrderedDict[int, None] = OrderedDict()  # positions delivered
        # Stream id -> its newest version delivered in this lease (or the one before the
        # version the table said was not delivered): every later version is new.
        self._newest: OrderedDict[str, int] = OrderedDict()
        self._streams_known = streams_known

    async def delivered(self, envelope: Envelope) -> bool:
        """Whether the event's messages were delivered; PostgreSQL's error when it does not
        answer (the event is then run again later: after a Redis loss its marks are gone, and
        taking it as new would deliver it twice)."""
        if envelope.position in self._remembered:
            return True
        newest = self._newest.get(envelope.stream_id)
        if newest is not None and envelope.version > newest:
            return False
        if envelope.position > await self._watermark():
            return False
        found = envelope.position in await self._lookup([envelope.position])
        if found:
            self._remember(envelope.position)
        else:
            self._learn(envelope.stream_id, envelope.version - 1)
        return found

    def record(self, envelope: Envelope) -> None:
        """Note that the event's messages are in their inboxes (`written` waits for the table)."""
        if envelope.position not in self._pending:
            self._pending[envelope.position] = asyncio.get_running_loop().create_future()
            self._unwritten.append(envelope.position)
        if self._writing is None:
            self._writing = asyncio.ensure_future(self._write())
        self._remember(envelope.position)
        self._highest = max(self._highest, envelope.position)
        self._learn(envelope.stream_id, envelope.version)

    async def written(self, envelope: Envelope, wait_s: float = RECORD_WAIT_S) -> None:
        """Return once the event's record is in the table (at once when this lease has none
        to write); `RecordNotWritten` after `wait_s`."""
        pending = self._pending.get(envelope.position)
        if pending is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(pending), wait_s)
        except TimeoutError as e:
            raise RecordNotWritten(f"event at position {envelope.position}") from e

    async def flush(self) -> None:
        """Wait until every record made so far was written (or failed to be)."""
        while self._writing is not None:
            await asyncio.shield(self._writing)

    async def _write(self) -> None:
        try:
            while self._unwritten:
                positions, self._unwritten = self._unwritten, []
                try:
                    await self._insert(positions)
                except PoolClosed:  # the process is stopping: nothing left to write them with
                    log.warning("projected_not_recorded", events=len(positions))
                    return
                except _UNAVAILABLE as e:  # kept, and written with the next ones
                    log.warning("projected_not_recorded_yet", events=len(positions), error=str(e))
                    self._unwritten = positions + self._unwritten
                    await asyncio.sleep(RETRY_WRITE_S)
                    continue
                for position in positions:
                    self._pending.pop(position).set_result(None)
        finally:
            self._writing = None

    async def _watermark(self) -> int:
        """No event past this position was delivered, by this lease or any before it."""
        if self._recorded is not None:
            return max(self._recorded, self._highest)
        reading = self._reading
        if reading is None:  # one read for every event that asks meanwhile
            reading = self._reading = asyncio.ensure_future(self._read_watermark())
        try:
            read = await asyncio.shield(reading)
        finally:
            if reading.done() and self._reading is reading:
                self._reading = None
        self._recorded = read
        return max(read, self._highest)

    def _remember(self, position: int) -> None:
        self._remembered[position] = None
        while len(self._remembered) > REMEMBERED:
            self._remembered.popitem(last=False)

    def _learn(self, stream_id: str, version: int) -> None:
        self._newest[stream_id] = max(version, self._newest.get(stream_id, version))
        self._newest.move_to_end(stream_id)
        while len(self._newest) > self._streams_known:
            self._newest.popitem(last=False)

    async def _read_watermark(self) -> int:
        row = await self._on_connection(_WATERMARK)
        return int(row[0][0]) if row else 0

    async def _select(self, positions: list[int]) -> set[int]:
        return {int(row[0]) for row in await self._on_connection(_DELIVERED, positions)}

    async def _insert(self, positions: list[int]) -> None:
        await self._on_connection(_RECORD, sorted(set(positions)))

    async def _on_connection(self, query: str, positions: list[int] | None = None) -> list[Any]:
        """`query`'s rows; tried once more on a connection that broke (a terminated backend is
        found only when used, and the pool then replaces it)."""
        params = None if positions is None else (positions,)
        try:
            return await self._query(query, params)
        except psycopg.OperationalError:
            return await self._query(query, params)

    async def _query(self, query: str, params: tuple[list[int]] | None) -> list[Any]:
        async with self._pool.connection() as conn:
            cur = await conn.execute(query, params)
            return await cur.fetchall() if cur.description else []
