"""The typed catalogue of domain events: frozen msgspec structs tagged by `type`.

Events are facts, named in the past tense. Change an event only by adding fields with defaults,
so that every stored and in-flight event still decodes. `docs/events.md` is generated from this
module (`weelo docs events`) and a test keeps the two equal.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec


class Location(msgspec.Struct, frozen=True, kw_only=True):
    lat: float
    lng: float
    address: str | None = None


class TruckSlot(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    truck_request_id: str
    vehicle_type: str


class AcceptedSlot(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    truck_request_id: str
    assignment_id: str
    vehicle_type: str


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", rename="camel"):
    """Base of every domain event; the subclass tag is the wire `type`."""


EndReason = Literal["fully_filled", "cancelled_by_customer", "timeout", "no_transporters"]


class BroadcastCreated(Event, tag="broadcast_created", frozen=True, kw_only=True):
    """A customer's search was accepted and its truck requests opened (state `created`)."""

    broadcast_id: str
    customer_id: str
    pickup: Location
    drop: Location
    note: str | None = None
    truck_requests: tuple[TruckSlot, ...]
    created_at: datetime
    expires_at: datetime
    request_hash: str = ""


class BroadcastStarted(Event, tag="broadcast_started", frozen=True, kw_only=True):
    """The search was sent to the matching transporters (state `broadcasting`)."""

    broadcast_id: str
    notified_transporters: tuple[str, ...]


class SlotsAccepted(Event, tag="slots_accepted", frozen=True, kw_only=True):
    """A transporter won one or more truck requests; each became an assignment."""

    broadcast_id: str
    transporter_id: str
    slots: tuple[AcceptedSlot, ...]


class BroadcastFilled(Event, tag="broadcast_filled", frozen=True, kw_only=True):
    """The last open truck request was won (state `fully_filled`)."""

    broadcast_id: str


class CancelledAssignment(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    assignment_id: str
    transporter_id: str
    driver_id: str | None = None


class BroadcastCancelled(Event, tag="broadcast_cancelled", frozen=True, kw_only=True):
    """The customer cancelled; open requests closed and every assignment cancelled."""

    broadcast_id: str
    customer_id: str
    reason: str | None = None
    cancelled_assignments: tuple[CancelledAssignment, ...] = ()


class BroadcastExpired(Event, tag="broadcast_expired", frozen=True, kw_only=True):
    """The broadcast reached `expiresAt` while active, or found nobody to notify."""

    broadcast_id: str
    end_reason: EndReason


class DriverAssigned(Event, tag="driver_assigned", frozen=True, kw_only=True):
    """A transporter put one of its drivers and vehicles on an assignment."""

    assignment_id: str
    broadcast_id: str
    transporter_id: str
    driver_id: str
    vehicle_id: str


class DriverAvailabilityChanged(
    Event, tag="driver_availability_changed", frozen=True, kw_only=True
):
    """A driver went online or offline (by request, or by missing heartbeats)."""

    driver_id: str
    transporter_id: str | None = None
    online: bool
    reason: Literal["requested", "heartbeat_timeout", "connected"] = "requested"


class VehicleRegistered(Event, tag="vehicle_registered", frozen=True, kw_only=True):
    """A transporter added or moved a vehicle in its fleet."""

    vehicle_id: str
    transporter_id: str
    vehicle_type: str
    lat: float
    lng: float


class VehicleRemoved(Event, tag="vehicle_removed", frozen=True, kw_only=True):
    """A transporter removed a vehicle from its fleet."""

    vehicle_id: str
    transporter_id: str


class DriverRegistered(Event, tag="driver_registered", frozen=True, kw_only=True):
    """A transporter added or updated one of its drivers."""

    driver_id: str
    transporter_id: str
    name: str
    phone: str


class BusProbe(Event, tag="bus_probe", frozen=True, kw_only=True):
    """A diagnostic event with no domain effect: tests and the `bus` benchmark time the bus."""

    sequence: int
    payload: str = ""


DomainEvent = (
    BroadcastCreated
    | BroadcastStarted
    | SlotsAccepted
    | BroadcastFilled
    | BroadcastCancelled
    | BroadcastExpired
    | DriverAssigned
    | DriverAvailabilityChanged
    | VehicleRegistered
    | VehicleRemoved
    | DriverRegistered
    | BusProbe
)

EVENT_TYPES: tuple[type[Event], ...] = DomainEvent.__args__


class Envelope(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """An event as stored and published: where it sits in its stream and in the global order."""

    event_id: str
    stream_id: str
    version: int
    position: int
    recorded_at: datetime
    correlation_id: str | None = None
    event: DomainEvent
