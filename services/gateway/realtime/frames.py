"""The messages of CONTRACT.md section 7: typed payloads, frames and who receives them.

A frame is stored and published without its `eventId`: the id is the entry id the user's inbox
gives it, spliced in when the frame is sent (`wire_text`).
"""

from __future__ import annotations

import msgspec

from libs.events.catalogue import Location
from libs.runtime.tokens import Role
from services.gateway.fleet_views import AssignmentView

REQUEST_CANCELLED = "Request cancelled"
TRIP_CANCELLED = "Trip cancelled"
NO_TRANSPORTERS = "No transporters found"
REQUEST_EXPIRED = "Request expired"


class Data(msgspec.Struct, frozen=True, kw_only=True, rename="camel", gc=False):
    """Base of every message payload (`gc=False`: they hold no cycles, so the garbage
    collector need not track the thousands made per second)."""


class StateChanged(Data, frozen=True, kw_only=True):
    broadcast_id: str
    state: str
    previous_state: str | None
    end_reason: str | None
    expires_at: str
    filled: int
    total: int


class TruckAccepted(Data, frozen=True, kw_only=True):
    broadcast_id: str
    truck_request_id: str
    assignment_id: str
    transporter_id: str


class DriverOnTruck(Data, frozen=True, kw_only=True):
    broadcast_id: str
    assignment_id: str
    driver_id: str
    vehicle_id: str


class SearchExpired(Data, frozen=True, kw_only=True):
    broadcast_id: str
    message: str
    retry: bool = True


class NewBroadcast(Data, frozen=True, kw_only=True):
    broadcast_id: str
    pickup: Location
    drop: Location
    open_by_type: dict[str, int]
    expires_at: str


class BroadcastUpdated(Data, frozen=True, kw_only=True):
    broadcast_id: str
    open_by_type: dict[str, int]


class BroadcastRemoved(Data, frozen=True, kw_only=True):
    broadcast_id: str
    reason: str


class AssignmentCancelled(Data, frozen=True, kw_only=True):
    assignment_id: str
    broadcast_id: str
    message: str = REQUEST_CANCELLED


class TripCancelled(Data, frozen=True, kw_only=True):
    assignment_id: str
    broadcast_id: str
    message: str = TRIP_CANCELLED


class DriverStatus(Data, frozen=True, kw_only=True):
    driver_id: str
    online: bool
    at: str


Payload = Data | AssignmentView


class Frame(msgspec.Struct, frozen=True, gc=False):
    """A message as stored in an inbox: everything but its `eventId`."""

    type: str
    at: str
    data: Payload


class Message(msgspec.Struct, frozen=True, gc=False):
    """One frame for one user (`user_key`). A claim makes one per notified transporter, so it
    is a struct the cycle collector does not track."""

    user: str
    frame: Frame


def user_key(role: Role, sub: str) -> str:
    """Who a message is for. Subjects are unique per role only, so the role is part of it."""
    return f"{role}:{sub}"


_encoder = msgspec.json.Encoder()


def encode(frame: Frame) -> bytes:
    return _encoder.encode(frame)


def wire_text(event_id: str, stored: bytes) -> str:
    """The frame as sent: `{"eventId": ..., "type", "at", "data"}` (stored starts with `{`)."""
    return '{"eventId":"' + event_id + '",' + stored[1:].decode()


PONG = '{"type":"pong"}'
RESYNC_REQUIRED = '{"type":"resync_required"}'
