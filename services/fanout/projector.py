"""The projector: each domain event becomes the contract's messages in its recipients' inboxes.

It reads the broadcast and driver event streams as the consumer group `projector`. Every
fan-out process runs it, but only the holder of the projector's lease projects
(`libs/events/lease.py`), so the events of one broadcast are projected one after another in
stream order even across processes; a new holder first runs what the old one left
unacknowledged, and every inbox write carries its token, so an old holder that wakes up after
losing the lease writes nothing. A failed event holds back the later events of its broadcast
(`RUNNER`). Delivery is at least once: an event already delivered is skipped, by its record in
PostgreSQL (`projected.py`, which outlives a Redis loss) or by `Inbox.deliver`'s marks in Redis,
so every message reaches its inbox once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from typing import Any

import msgspec
import structlog
from psycopg_pool import AsyncConnectionPool

from libs.events.catalogue import (
    BroadcastCancelled,
    BroadcastExpired,
    BroadcastFilled,
    DriverAssigned,
    DriverAvailabilityChanged,
    Envelope,
    SlotsAccepted,
)
from libs.events.dispatch import envelopes, stream_key
from libs.events.lease import Held, Lease, projector_role, redis_answers
from libs.events.runner import Delivery, Handler, PoisonMessage, RunnerConfig, StreamRunner
from libs.events.store import envelope_from_row
from libs.events.streams import dead_letter_stream, events_stream
from libs.inbox.inbox import Inbox, Message
from libs.readmodel import reads
from libs.readmodel.frames import Frame
from libs.readmodel.views import AssignmentView, assignment_view
from libs.runtime.service import Resources
from services.fanout import messages
from services.fanout.fold import apply, fold, remembered
from services.fanout.projected import Projected
from services.fanout.state import BroadcastState, FoldError

GROUP = "projector"
FLUSH_AT_END_S = 1.0
RECORD_CONNECTIONS = 1  # opened outside the pool, for the delivery records (`projected.py`)
CATEGORIES = ("broadcast", "driver")
# A new leader claims what the old one left pending at once (it is the only consumer), oldest
# first; a failed event is retried in place after 1 s, 2 s, ... (at most 60 s), its broadcast's
# (or driver's) later events waiting behind it, and dead-lettered after 10 minutes.
RUNNER = RunnerConfig(
    claim_idle_ms=0, reclaim_interval_s=1.0, block_ms=1000, hold_key_on_failure=True
)

# Events after which the broadcast's notified transporters get a newer `broadcast_updated` or
# its `broadcast_removed` (the claim of the last slot: `broadcast_filled` in the same commit).
SUPERSEDING = frozenset({SlotsAccepted, BroadcastFilled, BroadcastCancelled, BroadcastExpired})

_UNTIL = (
    "SELECT event_id, version, position, recorded_at, correlation_id, data::text"
    " FROM events WHERE stream_id = %s AND version <= %s ORDER BY version"
)


class Projector:
    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        inbox: Inbox,
        cache_size: int = 10_000,
        records: AsyncConnectionPool[Any] | None = None,
    ) -> None:
        """`records` holds the connection the delivery records go on (`pool` when None)."""
        self._pool, self._inbox = pool, inbox
        self._records = records or pool
        self.projected = Projected(self._records)
        self.token = 0  # the lease token of the current lead, carried by every inbox write
        self._cache: OrderedDict[str, BroadcastState] = OrderedDict()
        self._cache_size = cache_size

    def lead(self, token: int) -> None:
        """Start a lease of token `token`: what it knew of past deliveries may be out of date
        (another holder may have delivered since)."""
        self.token = token
        self.projected = Projected(self._records)

    def handler(self) -> Handler:
        """The runner's handler: broadcast events by `messages.HANDLERS`, then availability; an
        event already delivered (the relay published it again after a Redis loss, or it is
        redelivered) is skipped, and one delivered is recorded."""

        async def handle(delivery: Delivery) -> None:
            envelope = envelopes(delivery)
            with structlog.contextvars.bound_contextvars(
                correlation_id=envelope.correlation_id, event_id=envelope.event_id
            ):
                if not _projected(envelope):
                    return
                if not await self.projected.delivered(envelope):
                    if isinstance(envelope.event, DriverAvailabilityChanged):
                        await self.project_availability(envelope, envelope.event)
                    else:
                        await self.project_broadcast(envelope, updates_superseded(delivery))
                    self.projected.record(envelope)
                await self.projected.written(envelope)  # acknowledged only once recorded

        return handle

    async def project_broadcast(self, envelope: Envelope, superseded: bool = False) -> None:
        """The event's messages into their inboxes; without `broadcast_updated` when
        `superseded` (a later event of the broadcast, already read, sends a newer one or the
        broadcast's removal to the same transporters)."""
        try:
            before = await self._state_before(envelope)
            after = apply(before, envelope)
        except FoldError as e:
            raise PoisonMessage(str(e)) from e
        self._remember(after)
        trip = None
        if isinstance(envelope.event, DriverAssigned):
            trip = await self._trip(after, envelope.event.assignment_id)
        found = messages.for_change(messages.Change(before, after, envelope, trip))
        updates = [m for m in found if m.frame.type == "broadcast_updated"]
        others = [m for m in found if m.frame.type != "broadcast_updated"]
        await self._inbox.deliver(envelope.event_id, others, token=self.token)
        if updates and not superseded:
            await self._inbox.deliver(envelope.event_id, updates, part="updates", token=self.token)

    async def project_availability(
        self, envelope: Envelope, event: DriverAvailabilityChanged
    ) -> None:
        """`event` (the envelope's) to the driver's transporter."""
        transporter = event.transporter_id or await self._transporter_of(event.driver_id)
        found: list[Message[Frame]] = []
        if transporter is not None:
            found = messages.for_availability(event, envelope.recorded_at, transporter)
        await self._inbox.deliver(envelope.event_id, found, token=self.token)

    async def _state_before(self, envelope: Envelope) -> BroadcastState | None:
        """The broadcast after the event before `envelope`: from memory when this process
        projected that one, else folded from the event store."""
        if envelope.version == 1:
            return None
        cached = self._cache.get(envelope.stream_id)
        if cached is not None and cached.version == envelope.version - 1:
            return cached
        async with self._pool.connection() as conn:
            cur = await conn.execute(_UNTIL, (envelope.stream_id, envelope.version - 1))
            rows = await cur.fetchall()
        return fold(envelope_from_row(envelope.stream_id, row) for row in rows)

    def _remember(self, state: BroadcastState) -> None:
        stream_id = f"broadcast-{state.broadcast_id}"
        cached = self._cache.get(stream_id)
        if cached is None or cached.version < state.version:
            self._cache[stream_id] = remembered(state)
            self._cache.move_to_end(stream_id)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    async def _trip(self, after: BroadcastState, assignment_id: str) -> AssignmentView | None:
        """The assignment as the API shows it, as it stood after this event."""
        async with self._pool.connection() as conn:
            row = await reads.assignment(conn, assignment_id)
        if row is None:
            return None
        now = after.assignment(assignment_id)
        return msgspec.structs.replace(
            assignment_view(row),
            state=now.state,
            driver_id=now.driver_id,
            vehicle_id=now.vehicle_id,
        )

    async def _transporter_of(self, driver_id: str) -> str | None:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT transporter_id FROM drivers WHERE driver_id = %s", (driver_id,)
            )
            row = await cur.fetchone()
        return str(row[0]) if row else None


def _projected(envelope: Envelope) -> bool:
    """Whether the event sends any message (broadcast events and driver availability)."""
    event_type = type(envelope.event)
    return event_type in messages.HANDLERS or event_type is DriverAvailabilityChanged


def updates_superseded(delivery: Delivery) -> bool:
    """Whether an event of the same broadcast still to come in this batch sends the notified
    transporters a newer `broadcast_updated` or the broadcast's removal. Under load a batch holds
    many claims of one broadcast; each transporter then gets the latest open slots once instead
    of one message per claim (at 200 transporters, 200 inbox writes per claim). The later
    entries were decoded when they were read (`stream_key`)."""
    return any(_event_type(later) in SUPERSEDING for later in delivery.later)


def _event_type(delivery: Delivery) -> type[object] | None:
    try:
        return type(envelopes(delivery).event)
    except PoisonMessage:
        return None


async def run_projector(resources: Resources, stop: asyncio.Event) -> None:
    """The fan-out's task: project while this process holds the lease, stand by otherwise."""
    async with AsyncConnectionPool(
        resources.conninfo,
        min_size=RECORD_CONNECTIONS,
        max_size=RECORD_CONNECTIONS,
        name="projector-records",
        kwargs={"autocommit": True},
        open=False,
    ) as records:
        await project_while_leading(resources, records, stop)


async def project_while_leading(
    resources: Resources, records: AsyncConnectionPool[Any], stop: asyncio.Event
) -> None:
    prefix = resources.settings.redis_key_prefix
    inbox = Inbox(resources.redis, prefix)
    projector = Projector(resources.pool, inbox, records=records)
    handler = projector.handler()

    async def project(held: Held) -> None:
        projector.lead(held.token)
        await inbox.fence(held.token)  # every shard, before the first delivery
        await inbox.warm()
        await records.wait()  # the delivery records' connection is open before events come
        runners = [
            StreamRunner(
                resources.redis,
                stream=events_stream(prefix, category),
                group=GROUP,
                consumer=resources.instance,
                handler=handler,
                dead_letter=dead_letter_stream(prefix),
                config=RUNNER,
                key=stream_key,
            )
            for category in CATEGORIES
        ]
        try:
            await asyncio.gather(*(r.run(held.ended) for r in runners))
        finally:  # what it delivered is in the table before a successor reads it, if it can be
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(projector.projected.flush(), FLUSH_AT_END_S)

    lease = Lease(
        resources.pool,
        projector_role(prefix),
        resources.instance,
        healthy=redis_answers(resources.redis),
    )
    await lease.hold_forever(project, stop)
