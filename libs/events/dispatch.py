"""Turning stream entries into typed events, and an event handler table into one runner handler.

Each entry's envelope is decoded once (`envelopes`, `delivery.py`): by its ordering key
(`stream_key`) when the runner reads it; the handler, and a handler looking at the entries after
it, get the same envelope again.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

import structlog

from libs.events.catalogue import Envelope, Event
from libs.events.codec import UndecodableMessage, envelope_from_fields
from libs.events.delivery import EntryDecoder
from libs.events.handlers import Handlers
from libs.events.runner import Delivery, Handler, PoisonMessage

D = TypeVar("D")
# A service's event table: each event type to `async def fn(deps, event) -> None`.
EventHandlers = Handlers[Event, D, Awaitable[None]]


def _envelope(fields: dict[bytes, bytes]) -> Envelope:
    try:
        return envelope_from_fields(fields)
    except UndecodableMessage as e:
        raise PoisonMessage(str(e)) from e


envelopes: EntryDecoder[Envelope] = EntryDecoder(_envelope)


def envelope_of(delivery: Delivery) -> Envelope:
    """The entry's envelope (decoded once per entry), or `PoisonMessage` if it holds none."""
    return envelopes(delivery)


def stream_key(delivery: Delivery) -> str:
    """Order key: the event's own stream (one broadcast, one driver...)."""
    try:
        return envelopes(delivery).stream_id
    except PoisonMessage:
        return delivery.entry_id


def event_handler(table: EventHandlers[D], deps: D) -> Handler:
    """A runner handler that calls the table's handler for each entry's event type with `deps`
    and the event, its correlation id and event id bound in the log context.

    Event types with no entry in the table are acknowledged without effect; an entry that is not
    an envelope is dead-lettered (`PoisonMessage`)."""

    async def handle(delivery: Delivery) -> None:
        envelope = envelopes(delivery)
        event = envelope.event
        fn = table.get(type(event))
        if fn is None:
            return
        with structlog.contextvars.bound_contextvars(
            correlation_id=envelope.correlation_id, event_id=envelope.event_id
        ):
            await fn(deps, event)

    return handle
