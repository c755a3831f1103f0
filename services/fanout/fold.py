"""A broadcast's state at one of its events: a pure fold of its event stream.

The projector needs, for each event, who the broadcast's customer and notified transporters
are, how many slots are open per type, who holds each assignment and which state the broadcast
was in before. All of it follows from the stream `broadcast-<id>` up to that event's version.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from libs.events.catalogue import (
    BroadcastCancelled,
    BroadcastCreated,
    BroadcastExpired,
    BroadcastFilled,
    BroadcastStarted,
    DriverAssigned,
    Envelope,
    SlotsAccepted,
)
from libs.readmodel.states import ENDED
from services.fanout.state import Assignment, BroadcastState, FoldError, Slot


def _created(event: BroadcastCreated, version: int) -> BroadcastState:
    return BroadcastState(
        broadcast_id=event.broadcast_id,
        customer_id=event.customer_id,
        pickup=event.pickup,
        drop=event.drop,
        expires_at=event.expires_at,
        version=version,
        slots=tuple(Slot(s.truck_request_id, s.vehicle_type) for s in event.truck_requests),
    )


def _started(state: BroadcastState, event: BroadcastStarted) -> BroadcastState:
    # Interned: the projector keeps thousands of states (projector.py's cache), each naming
    # hundreds of transporters; decoded, every event would hold its own copy of every id (about
    # 55 KiB a search to 759 transporters, 540 MiB for the cache), interned one tuple of them.
    notified = tuple(map(sys.intern, event.notified_transporters))
    return replace(state, state="broadcasting", notified=notified)


def _accepted(state: BroadcastState, event: SlotsAccepted) -> BroadcastState:
    won = {s.truck_request_id: s.assignment_id for s in event.slots}
    slots = tuple(
        replace(s, state="accepted", assignment_id=won[s.truck_request_id])
        if s.truck_request_id in won
        else s
        for s in state.slots
    )
    new = tuple(
        Assignment(s.assignment_id, s.truck_request_id, event.transporter_id, s.vehicle_type)
        for s in event.slots
    )
    still_open = any(s.state == "open" for s in slots)
    # The last slot leaves the state to the `broadcast_filled` that follows in the same commit.
    return replace(
        state,
        slots=slots,
        assignments=state.assignments + new,
        state="partially_filled" if still_open else state.state,
    )


def _filled(state: BroadcastState, _event: BroadcastFilled) -> BroadcastState:
    return replace(state, state="fully_filled", end_reason="fully_filled")


def _cancelled(state: BroadcastState, _event: BroadcastCancelled) -> BroadcastState:
    return replace(
        state,
        state="cancelled",
        end_reason="cancelled_by_customer",
        slots=tuple(
            replace(s, state="cancelled") if s.state != "expired" else s for s in state.slots
        ),
        assignments=tuple(replace(a, state="cancelled") for a in state.assignments),
    )


def _expired(state: BroadcastState, event: BroadcastExpired) -> BroadcastState:
    return replace(
        state,
        state="expired",
        end_reason=event.end_reason,
        slots=tuple(replace(s, state="expired") if s.state == "open" else s for s in state.slots),
    )


def _driver_assigned(state: BroadcastState, event: DriverAssigned) -> BroadcastState:
    state.assignment(event.assignment_id)  # must exist
    assignments = tuple(
        replace(a, state="driver_assigned", driver_id=event.driver_id, vehicle_id=event.vehicle_id)
        if a.assignment_id == event.assignment_id
        else a
        for a in state.assignments
    )
    return replace(state, assignments=assignments)


_APPLY: dict[type[Any], Callable[[BroadcastState, Any], BroadcastState]] = {
    BroadcastStarted: _started,
    SlotsAccepted: _accepted,
    BroadcastFilled: _filled,
    BroadcastCancelled: _cancelled,
    BroadcastExpired: _expired,
    DriverAssigned: _driver_assigned,
}


def apply(state: BroadcastState | None, envelope: Envelope) -> BroadcastState:
    """The state after `envelope`, given the state after the event before it (None at first)."""
    event = envelope.event
    if isinstance(event, BroadcastCreated):
        return _created(event, envelope.version)
    step = _APPLY.get(type(event))
    if state is None or step is None:
        raise FoldError(f"{type(event).__name__} cannot follow {state and state.state}")
    return replace(step(state, event), version=envelope.version)


def fold(envelopes: Iterable[Envelope]) -> BroadcastState | None:
    state: BroadcastState | None = None
    for envelope in envelopes:
        state = apply(state, envelope)
    return state


def remembered(state: BroadcastState) -> BroadcastState:
    """What the projector's cache keeps of `state`: all of it while the broadcast is open; once
    it ended, without the notified transporters, since no message after the end goes to them
    (the end itself told them, with the state before this one). An ended broadcast still gets
    events (a driver put on a won slot, a cancel), so it stays cached, at about 1 KiB instead of
    a pointer per notified transporter."""
    return replace(state, notified=()) if state.state in ENDED else state
