"""The messages of CONTRACT.md section 7: typed payloads, frames and who receives them.

The fan-out writes these frames into users' inboxes; the gateway sends them and describes them
in its AsyncAPI document (`services/gateway/asyncapi.py`, `docs/websocket.md`), so both take
them from here. `FRAME_TYPES` is the table: each `type` with its payload and its recipients.

A frame is stored and published without its `eventId`: the id is the entry id the user's inbox
gives it, which the gateway splices in when it sends the frame
(`services/gateway/realtime/wire.py`).
"""

from __future__ import annotations

from typing import Annotated, Literal, NamedTuple, get_args

import msgspec

from libs.events.catalogue import EndReason, Location
from libs.events.failures import REFUSALS
from libs.readmodel.states import ENDED, UNENDED
from libs.readmodel.views import AssignmentView

# The contract's fixed texts: the two an API refusal also says come from its table.
REQUEST_CANCELLED = REFUSALS["request_cancelled"].message
REQUEST_EXPIRED = REFUSALS["request_expired"].message
TRIP_CANCELLED = "Trip cancelled"
NO_TRANSPORTERS = "No transporters found"
REMOVED_REASONS = ("cancelled", "expired", "fully_filled")

Time = Annotated[str, msgspec.Meta(description="UTC, ISO 8601 with milliseconds")]
State = Annotated[str, msgspec.Meta(description="one of " + ", ".join((*UNENDED, *ENDED)))]
OpenByType = Annotated[
    dict[str, int], msgspec.Meta(description="open truck requests per vehicle type")
]


class Data(msgspec.Struct, frozen=True, kw_only=True, rename="camel", gc=False):
    """Base of every message payload (`gc=False`: they hold no cycles, so the garbage
    collector need not track the thousands made per second)."""


class StateChanged(Data, frozen=True, kw_only=True):
    """The customer's broadcast moved to another state."""

    broadcast_id: str
    state: State
    previous_state: State | None
    end_reason: Annotated[
        str | None,
        msgspec.Meta(description="once ended: " + ", ".join(get_args(EndReason)) + "; else null"),
    ]
    expires_at: Time
    filled: Annotated[int, msgspec.Meta(description="truck requests accepted so far")]
    total: Annotated[int, msgspec.Meta(description="truck requests in the broadcast")]


class TruckAccepted(Data, frozen=True, kw_only=True):
    """A transporter won one of the customer's truck requests."""

    broadcast_id: str
    truck_request_id: str
    assignment_id: str
    transporter_id: str


class DriverOnTruck(Data, frozen=True, kw_only=True):
    """A transporter put a driver and a vehicle on one of the customer's trucks."""

    broadcast_id: str
    assignment_id: str
    driver_id: str
    vehicle_id: str


class SearchExpired(Data, frozen=True, kw_only=True):
    """The customer's broadcast expired; the client offers to search again."""

    broadcast_id: str
    message: Annotated[
        str,
        msgspec.Meta(
            description=f"`{NO_TRANSPORTERS}` if nothing was filled, else `{REQUEST_EXPIRED}`"
        ),
    ]
    retry: bool = True


class NewBroadcast(Data, frozen=True, kw_only=True):
    """A search this transporter has a matching vehicle for: a new entry of its list."""

    broadcast_id: str
    pickup: Location
    drop: Location
    open_by_type: OpenByType
    expires_at: Time


class BroadcastUpdated(Data, frozen=True, kw_only=True):
    """Slots of a listed broadcast were taken; some are still open."""

    broadcast_id: str
    open_by_type: OpenByType


class BroadcastRemoved(Data, frozen=True, kw_only=True):
    """A listed broadcast can no longer be accepted: remove it from the list."""

    broadcast_id: str
    reason: Annotated[str, msgspec.Meta(description="one of " + ", ".join(REMOVED_REASONS))]


class AssignmentCancelled(Data, frozen=True, kw_only=True):
    """The customer cancelled a broadcast this transporter holds an assignment of."""

    assignment_id: str
    broadcast_id: str
    message: str = REQUEST_CANCELLED


class TripCancelled(Data, frozen=True, kw_only=True):
    """The driver's trip is off: its broadcast was cancelled, or another driver took it."""

    assignment_id: str
    broadcast_id: str
    message: str = TRIP_CANCELLED


class DriverStatus(Data, frozen=True, kw_only=True):
    """One of the transporter's drivers went online or offline."""

    driver_id: str
    online: bool
    at: Time


Payload = Data | AssignmentView

FrameKind = Literal[
    "broadcast_state_changed",
    "truck_accepted",
    "driver_assigned",
    "broadcast_expired",
    "new_broadcast",
    "broadcast_updated",
    "broadcast_removed",
    "assignment_cancelled",
    "driver_status_changed",
    "trip_assigned",
    "trip_cancelled",
]


class Frame(msgspec.Struct, frozen=True, gc=False):
    """A message as stored in an inbox: everything but its `eventId`."""

    type: FrameKind
    at: str
    data: Payload


Recipient = Literal["customer", "transporter", "driver"]


class FrameType(NamedTuple):
    kind: FrameKind
    data: type[Data] | type[AssignmentView]
    role: Recipient  # whose inbox it goes to
    to: str  # which of them, as CONTRACT.md section 7 says


FRAME_TYPES: tuple[FrameType, ...] = (
    FrameType("broadcast_state_changed", StateChanged, "customer", "customer"),
    FrameType("truck_accepted", TruckAccepted, "customer", "customer"),
    FrameType("driver_assigned", DriverOnTruck, "customer", "customer"),
    FrameType("broadcast_expired", SearchExpired, "customer", "customer"),
    FrameType("new_broadcast", NewBroadcast, "transporter", "each notified transporter"),
    FrameType("broadcast_updated", BroadcastUpdated, "transporter", "notified transporters"),
    FrameType("broadcast_removed", BroadcastRemoved, "transporter", "notified transporters"),
    FrameType(
        "assignment_cancelled",
        AssignmentCancelled,
        "transporter",
        "transporter holding an assignment",
    ),
    FrameType("driver_status_changed", DriverStatus, "transporter", "the driver's transporter"),
    FrameType("trip_assigned", AssignmentView, "driver", "driver"),
    FrameType("trip_cancelled", TripCancelled, "driver", "driver"),
)
