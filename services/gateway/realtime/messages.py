"""Which messages each event sends to whom (CONTRACT.md section 7): pure, on one screen.

Each function takes the `Change` an event made to a broadcast (its state before and after, and
the envelope) and answers the contract's messages in the order a client should see them.
`HANDLERS` is the table; `for_availability` covers the drivers' own streams.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from libs.events.catalogue import (
    BroadcastCancelled,
    BroadcastCreated,
    BroadcastExpired,
    BroadcastFilled,
    BroadcastStarted,
    DriverAssigned,
    DriverAvailabilityChanged,
    Envelope,
    SlotsAccepted,
)
from libs.runtime.clock import iso_ms
from services.gateway.fleet_views import AssignmentView
from services.gateway.realtime import frames as f
from services.gateway.realtime.state import BroadcastState


@dataclass(frozen=True)
class Change:
    before: BroadcastState | None
    after: BroadcastState
    envelope: Envelope
    trip: AssignmentView | None = None  # `driver_assigned` only: the assignment as shown

    @functools.cached_property
    def at(self) -> str:
        return iso_ms(self.envelope.recorded_at)

    def to(self, user: str, kind: str, data: f.Payload) -> f.Message:
        return f.Message(user, f.Frame(kind, self.at, data))

    def to_customer(self, kind: str, data: f.Payload) -> f.Message:
        return self.to(f"customer:{self.after.customer_id}", kind, data)

    def to_transporters(self, kind: str, data: f.Payload) -> list[f.Message]:
        """One frame, shared by every notified transporter's message (encoded once)."""
        frame = f.Frame(kind, self.at, data)
        return [f.Message(f"transporter:{t}", frame) for t in self.after.notified]


def state_changed(change: Change) -> f.Message:
    after = change.after
    data = f.StateChanged(
        broadcast_id=after.broadcast_id,
        state=after.state,
        previous_state=change.before.state if change.before else None,
        end_reason=after.end_reason,
        expires_at=iso_ms(after.expires_at),
        filled=after.filled,
        total=after.total,
    )
    return change.to_customer("broadcast_state_changed", data)


def removed(change: Change, reason: str) -> list[f.Message]:
    data = f.BroadcastRemoved(broadcast_id=change.after.broadcast_id, reason=reason)
    return change.to_transporters("broadcast_removed", data)


def on_created(change: Change) -> list[f.Message]:
    return [state_changed(change)]


def on_started(change: Change) -> list[f.Message]:
    after = change.after
    data = f.NewBroadcast(
        broadcast_id=after.broadcast_id,
        pickup=after.pickup,
        drop=after.drop,
        open_by_type=after.open_by_type(),
        expires_at=iso_ms(after.expires_at),
    )
    return [state_changed(change), *change.to_transporters("new_broadcast", data)]


def on_accepted(change: Change) -> list[f.Message]:
    event, after = change.envelope.event, change.after
    assert isinstance(event, SlotsAccepted)
    out = [
        change.to_customer(
            "truck_accepted",
            f.TruckAccepted(
                broadcast_id=after.broadcast_id,
                truck_request_id=s.truck_request_id,
                assignment_id=s.assignment_id,
                transporter_id=event.transporter_id,
            ),
        )
        for s in event.slots
    ]
    if change.before is None or change.before.state != after.state:
        out.append(state_changed(change))
    open_by_type = after.open_by_type()
    if any(open_by_type.values()):  # the last slot is told by `broadcast_filled` instead
        update = f.BroadcastUpdated(broadcast_id=after.broadcast_id, open_by_type=open_by_type)
        out += change.to_transporters("broadcast_updated", update)
    return out


def on_filled(change: Change) -> list[f.Message]:
    return [state_changed(change), *removed(change, "fully_filled")]


def on_cancelled(change: Change) -> list[f.Message]:
    event, bid = change.envelope.event, change.after.broadcast_id
    assert isinstance(event, BroadcastCancelled)
    out = [state_changed(change)]
    if change.before is not None and change.before.state in ("broadcasting", "partially_filled"):
        out += removed(change, "cancelled")  # a filled broadcast already left their lists
    for a in event.cancelled_assignments:
        out.append(
            change.to(
                f"transporter:{a.transporter_id}",
                "assignment_cancelled",
                f.AssignmentCancelled(assignment_id=a.assignment_id, broadcast_id=bid),
            )
        )
        if a.driver_id is not None:
            trip = f.TripCancelled(assignment_id=a.assignment_id, broadcast_id=bid)
            out.append(change.to(f"driver:{a.driver_id}", "trip_cancelled", trip))
    return out


def on_expired(change: Change) -> list[f.Message]:
    after = change.after
    message = f.REQUEST_EXPIRED if after.filled else f.NO_TRANSPORTERS
    expired = f.SearchExpired(broadcast_id=after.broadcast_id, message=message)
    return [
        state_changed(change),
        change.to_customer("broadcast_expired", expired),
        *removed(change, "expired"),
    ]


def on_driver_assigned(change: Change) -> list[f.Message]:
    event, after = change.envelope.event, change.after
    assert isinstance(event, DriverAssigned)
    data = f.DriverOnTruck(
        broadcast_id=after.broadcast_id,
        assignment_id=event.assignment_id,
        driver_id=event.driver_id,
        vehicle_id=event.vehicle_id,
    )
    out = [change.to_customer("driver_assigned", data)]
    previous = change.before.assignment(event.assignment_id) if change.before else None
    if previous is not None and previous.driver_id not in (None, event.driver_id):
        # The driver who was on it is free again: their trip is cancelled.
        trip = f.TripCancelled(assignment_id=event.assignment_id, broadcast_id=after.broadcast_id)
        out.append(change.to(f"driver:{previous.driver_id}", "trip_cancelled", trip))
    if change.trip is not None:
        out.append(change.to(f"driver:{event.driver_id}", "trip_assigned", change.trip))
    return out


HANDLERS: dict[type[Any], Callable[[Change], list[f.Message]]] = {
    BroadcastCreated: on_created,
    BroadcastStarted: on_started,
    SlotsAccepted: on_accepted,
    BroadcastFilled: on_filled,
    BroadcastCancelled: on_cancelled,
    BroadcastExpired: on_expired,
    DriverAssigned: on_driver_assigned,
}


def for_change(change: Change) -> list[f.Message]:
    handler = HANDLERS.get(type(change.envelope.event))
    return handler(change) if handler else []


def for_availability(envelope: Envelope, transporter_id: str) -> list[f.Message]:
    """`driver_status_changed` to the driver's transporter; `at` is when it was recorded."""
    event = envelope.event
    assert isinstance(event, DriverAvailabilityChanged)
    at = iso_ms(envelope.recorded_at)
    data = f.DriverStatus(driver_id=event.driver_id, online=event.online, at=at)
    frame = f.Frame("driver_status_changed", at, data)
    return [f.Message(f"transporter:{transporter_id}", frame)]
