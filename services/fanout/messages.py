"""Which messages each event sends to whom (CONTRACT.md section 7): pure, on one screen.

Each function takes the `Change` an event made to a broadcast (its state before and after, and
the envelope) and the event, and answers the contract's messages in the order a client should see
them. `HANDLERS` is the table; `for_availability` covers the drivers' own streams.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime

from libs.events.catalogue import (
    BroadcastCancelled,
    BroadcastCreated,
    BroadcastExpired,
    BroadcastFilled,
    BroadcastStarted,
    DriverAssigned,
    DriverAvailabilityChanged,
    Envelope,
    Event,
    SlotsAccepted,
)
from libs.events.clock import iso_ms
from libs.events.handlers import Handlers
from libs.inbox.inbox import Message
from libs.readmodel import frames as f
from libs.readmodel.states import OPEN
from libs.readmodel.views import AssignmentView
from services.fanout.state import BroadcastState


@dataclass(frozen=True)
class Change:
    before: BroadcastState | None
    after: BroadcastState
    envelope: Envelope
    trip: AssignmentView | None = None  # `driver_assigned` only: the assignment as shown

    @functools.cached_property
    def at(self) -> str:
        return iso_ms(self.envelope.recorded_at)

    def to(self, user: str, kind: f.FrameKind, data: f.Payload) -> Message[f.Frame]:
        return Message(user, f.Frame(kind, self.at, data))

    def to_customer(self, kind: f.FrameKind, data: f.Payload) -> Message[f.Frame]:
        return self.to(f"customer:{self.after.customer_id}", kind, data)

    def to_transporters(self, kind: f.FrameKind, data: f.Payload) -> list[Message[f.Frame]]:
        """One frame, shared by every notified transporter's message (encoded once)."""
        frame = f.Frame(kind, self.at, data)
        return [Message(f"transporter:{t}", frame) for t in self.after.notified]


def state_changed(change: Change) -> Message[f.Frame]:
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


def removed(change: Change, reason: str) -> list[Message[f.Frame]]:
    data = f.BroadcastRemoved(broadcast_id=change.after.broadcast_id, reason=reason)
    return change.to_transporters("broadcast_removed", data)


def on_created(change: Change, _event: BroadcastCreated) -> list[Message[f.Frame]]:
    return [state_changed(change)]


def on_started(change: Change, _event: BroadcastStarted) -> list[Message[f.Frame]]:
    after = change.after
    data = f.NewBroadcast(
        broadcast_id=after.broadcast_id,
        pickup=after.pickup,
        drop=after.drop,
        open_by_type=after.open_by_type(),
        expires_at=iso_ms(after.expires_at),
    )
    return [state_changed(change), *change.to_transporters("new_broadcast", data)]


def on_accepted(change: Change, event: SlotsAccepted) -> list[Message[f.Frame]]:
    after = change.after
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


def on_filled(change: Change, _event: BroadcastFilled) -> list[Message[f.Frame]]:
    return [state_changed(change), *removed(change, "fully_filled")]


def on_cancelled(change: Change, event: BroadcastCancelled) -> list[Message[f.Frame]]:
    bid = change.after.broadcast_id
    out = [state_changed(change)]
    if change.before is not None and change.before.state in OPEN:
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


def on_expired(change: Change, _event: BroadcastExpired) -> list[Message[f.Frame]]:
    after = change.after
    message = f.REQUEST_EXPIRED if after.filled else f.NO_TRANSPORTERS
    expired = f.SearchExpired(broadcast_id=after.broadcast_id, message=message)
    return [
        state_changed(change),
        change.to_customer("broadcast_expired", expired),
        *removed(change, "expired"),
    ]


def on_driver_assigned(change: Change, event: DriverAssigned) -> list[Message[f.Frame]]:
    after = change.after
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


HANDLERS = (
    Handlers[Event, Change, list[Message[f.Frame]]]()
    .on(BroadcastCreated, on_created)
    .on(BroadcastStarted, on_started)
    .on(SlotsAccepted, on_accepted)
    .on(BroadcastFilled, on_filled)
    .on(BroadcastCancelled, on_cancelled)
    .on(BroadcastExpired, on_expired)
    .on(DriverAssigned, on_driver_assigned)
)


def for_change(change: Change) -> list[Message[f.Frame]]:
    event = change.envelope.event
    handler = HANDLERS.get(type(event))
    return handler(change, event) if handler else []


def for_availability(
    event: DriverAvailabilityChanged, recorded_at: datetime, transporter_id: str
) -> list[Message[f.Frame]]:
    """`driver_status_changed` to the driver's transporter; `at` is when it was recorded."""
    at = iso_ms(recorded_at)
    data = f.DriverStatus(driver_id=event.driver_id, online=event.online, at=at)
    frame = f.Frame("driver_status_changed", at, data)
    return [Message(f"transporter:{transporter_id}", frame)]
