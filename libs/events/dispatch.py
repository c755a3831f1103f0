"""Turning stream entries into typed events, and a handler table into one runner handler."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import structlog

from libs.events.catalogue import Envelope, Event
from libs.events.codec import UndecodableMessage, envelope_from_fields
from libs.events.runner import Delivery, Handler, PoisonMessage

E = TypeVar("E", bound=Event)
EventHandler = Callable[[Envelope], Awaitable[None]]
HandlerTable = Mapping[type[Event], EventHandler]


def envelope_of(delivery: Delivery) -> Envelope:
    try:
        return envelope_from_fields(delivery.fields)
    except UndecodableMessage as e:
        raise PoisonMessage(str(e)) from e


def stream_key(delivery: Delivery) -> str:
    """Order key: the event's own stream (one broadcast, one driver...)."""
    try:
        return envelope_from_fields(delivery.fields).stream_id
    except UndecodableMessage:
        return delivery.entry_id


def event_handler(table: HandlerTable) -> Handler:
    """A runner handler that decodes each entry and calls the table's handler for its type.

    Event types with no entry in the table are acknowledged without effect.
    """

    async def handle(delivery: Delivery) -> None:
        envelope = envelope_of(delivery)
        handler = table.get(type(envelope.event))
        if handler is None:
            return
        with structlog.contextvars.bound_contextvars(
            correlation_id=envelope.correlation_id, event_id=envelope.event_id
        ):
            await handler(envelope)

    return handle


def typed(event: Any, kind: type[E]) -> E:
    """Narrow an envelope's event to the type its handler was registered for."""
    if not isinstance(event, kind):
        raise TypeError(f"expected {kind.__name__}, got {type(event).__name__}")
    return event
