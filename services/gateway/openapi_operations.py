"""What the route table (`routes.API`) does not say about each `/v1` operation, for the API
document: its summary, the request body type it decodes, each success status with its body
type, the command it sends and the refusals of its own. Keyed by handler, so a route whose
handler is missing here fails the document's generation (and its test)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from msgspec import Struct

from libs.events.commands import (
    AcceptResult,
    AcceptSlots,
    AssignDriver,
    Availability,
    CancelBroadcast,
    Command,
    CreateBroadcast,
    RegisterDriver,
    RegisterVehicle,
    RemoveVehicle,
    SetAvailability,
)
from libs.events.failures import FailureCode
from libs.readmodel.views import AssignmentView
from services.gateway import accepts, assignments, bodies, broadcasts, fleet
from services.gateway.fleet_views import AssignmentList, DriverList, DriverView, VehicleView
from services.gateway.http import Handler
from services.gateway.views import BroadcastList, BroadcastView

# The refusals each command's service answers with (besides `unavailable`, which any command
# may get); tests/gateway/test_openapi.py checks them against the services' `Rejected` calls.
COMMAND_REFUSALS: Final[dict[type[Command], tuple[FailureCode, ...]]] = {
    RegisterVehicle: ("vehicle_taken",),
    RemoveVehicle: ("not_found",),
    RegisterDriver: ("driver_taken",),
    CreateBroadcast: ("active_broadcast_exists",),
    CancelBroadcast: ("not_found", "request_expired"),
    AcceptSlots: (
        "not_found",
        "not_notified",
        "no_longer_available",
        "request_cancelled",
        "request_expired",
    ),
    AssignDriver: (
        "not_found",
        "forbidden",
        "driver_offline",
        "driver_busy",
        "vehicle_busy",
        "vehicle_type_mismatch",
        "request_cancelled",
    ),
    SetAvailability: ("not_found",),
}


class TokenPair(Struct, frozen=True, kw_only=True, rename="camel"):
    """A new access token (1 h) and a new refresh token (30 days)."""

    access_token: str
    refresh_token: str


@dataclass(frozen=True)
class Success:
    status: int
    body: type[Struct] | None
    description: str


@dataclass(frozen=True)
class Operation:
    summary: str
    ok: tuple[Success, ...]
    body: type[bodies.Body] | None = None
    body_optional: bool = False
    command: type[Command] | None = None
    refusals: tuple[FailureCode, ...] = ()  # the gateway handler's own
    description: str = ""


def _ok(body: type[Struct] | None, description: str, status: int = 200) -> tuple[Success, ...]:
    return (Success(status, body, description),)


_CREATED = (
    Success(201, BroadcastView, "Created: the new broadcast (already `expired` with "
            "`endReason: no_transporters` when no transporter was near)."),
    Success(200, BroadcastView, "The same search again (same Idempotency-Key, or without one "
            "the identical body while it is active): the same broadcast, with "
            "`Idempotent-Replayed: true`."),
)  # fmt: skip
_ACCEPTED = _ok(AcceptResult, "The slots won, all or none, and the broadcast's state after.")

OPERATIONS: Final[dict[Handler, Operation]] = {
    fleet.put_vehicle: Operation(
        "Register or move a vehicle", _ok(VehicleView, "The vehicle."),
        body=bodies.VehicleBody, command=RegisterVehicle),
    fleet.delete_vehicle: Operation(
        "Remove a vehicle", _ok(None, "Removed.", 204), command=RemoveVehicle),
    fleet.put_driver: Operation(
        "Register or update a driver", _ok(DriverView, "The driver."),
        body=bodies.DriverBody, command=RegisterDriver, refusals=("not_found",)),
    fleet.list_drivers: Operation(
        "My drivers, online or not", _ok(DriverList, "Every driver of the transporter.")),
    broadcasts.create_broadcast: Operation(
        "Search: broadcast a request for trucks", _CREATED,
        body=bodies.CreateBroadcastBody, command=CreateBroadcast, refusals=("not_found",),
        description="`trucks` holds distinct `vehicleType`s (422 otherwise)."),
    broadcasts.get_broadcast: Operation(
        "A broadcast", _ok(BroadcastView, "The broadcast; a notified transporter sees no "
                           "other transporter's ids."), refusals=("not_found",),
        description="Its customer, or a transporter it was sent to; anyone else gets 404."),
    broadcasts.active_broadcast: Operation(
        "My active broadcast", _ok(BroadcastView, "The customer's active broadcast."),
        refusals=("not_found",), description="404 `not_found` when there is none."),
    broadcasts.notified_broadcasts: Operation(
        "My actionable list", _ok(BroadcastList, "The active broadcasts this transporter was "
                                  "sent, with the open slots per vehicle type.")),
    broadcasts.cancel_broadcast: Operation(
        "Cancel my broadcast", _ok(BroadcastView, "The broadcast, `cancelled` (a repeat "
                                   "answers the same)."),
        body=bodies.CancelBody, body_optional=True, command=CancelBroadcast,
        refusals=("not_found",)),
    accepts.accept_broadcast: Operation(
        "Accept a quantity of one vehicle type", _ACCEPTED,
        body=bodies.AcceptBody, command=AcceptSlots),
    accepts.accept_truck_request: Operation(
        "Accept one truck request", _ACCEPTED, body=bodies.EmptyBody, body_optional=True,
        command=AcceptSlots, refusals=("not_found",)),
    assignments.get_assignment: Operation(
        "An assignment", _ok(AssignmentView, "The assignment."), refusals=("not_found",),
        description="Its transporter, its driver or the broadcast's customer; else 404."),
    assignments.assign_driver: Operation(
        "Assign a driver and vehicle", _ok(AssignmentView, "The assignment, "
                                           "`driver_assigned`."),
        body=bodies.AssignDriverBody, command=AssignDriver, refusals=("not_found",)),
    assignments.transporter_assignments: Operation(
        "My active assignments", _ok(AssignmentList, "The transporter's active assignments.")),
    assignments.driver_assignment: Operation(
        "My trip", _ok(AssignmentView, "The driver's active assignment."),
        refusals=("not_found",), description="404 `not_found` when there is none."),
    assignments.set_availability: Operation(
        "Go online or offline", _ok(Availability, "The driver's availability now."),
        body=bodies.AvailabilityBody, command=SetAvailability),
    assignments.heartbeat: Operation(
        "Heartbeat", _ok(None, "Seen.", 204),
        description="A driver online with no heartbeat (nor open WebSocket) for "
                    "`PRESENCE_TTL_SECONDS` turns offline."),
}  # fmt: skip

REFRESH: Final = Operation(
    "Exchange a refresh token for a new pair",
    _ok(TokenPair, "A new token pair."),
    body=bodies.RefreshBody,
    description="Needs no bearer token: the refresh token (signed with `JWT_REFRESH_SECRET`) is "
    "the credential; an access token is refused here (401).",
)


def refusals_of(operation: Operation) -> tuple[FailureCode, ...]:
    """The operation's own refusals and its command's."""
    sent = COMMAND_REFUSALS[operation.command] if operation.command else ()
    return (*operation.refusals, *sent)
