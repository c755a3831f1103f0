"""The messages of CONTRACT.md section 7: typed payloads, frames and who receives them.

A frame is stored and published without its `eventId`: the id is the entry id the user's inbox
gives it, which the gateway splices in when it sends the frame
(`services/gateway/realtime/wire.py`).
"""

from __future__ import annotations

import msgspec

from libs.events.catalogue import Location
from libs.events.failures import REFUSALS
from libs.readmodel.views import AssignmentView

# The contract's fixed texts: the two an API refusal also says come from its table.
REQUEST_CANCELLED = REFUSALS["request_cancelled"].message
REQUEST_EXPIRED = REFUSALS["request_expired"].message
TRIP_CANCELLED = "Trip cancelled"
NO_TRANSPORTERS = "No transporters found"


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
