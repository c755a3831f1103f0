"""The typed catalogue of commands (requests to change state) and their replies.

The gateway sends a command to the owning service's command stream and waits for the reply on
its own reply channel. A command is executed at most once in effect: its id is stored with the
change it made, so a redelivered or retried command gets the first reply again.
"""

from __future__ import annotations

from typing import Any

import msgspec

from libs.events.catalogue import Location
from libs.events.failures import FailureCode, message_for


class TruckOrder(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    vehicle_type: str
    quantity: int


class Command(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", rename="camel"):
    """Base of every command; the subclass tag is the wire `type`."""

    def ordering_key(self) -> str:
        """Commands with the same key run one after another; others may run side by side."""
        raise NotImplementedError


class RegisterVehicle(Command, tag="register_vehicle", frozen=True, kw_only=True):
    transporter_id: str
    vehicle_id: str
    vehicle_type: str
    lat: float
    lng: float

    def ordering_key(self) -> str:
        return f"vehicle:{self.vehicle_id}"


class RemoveVehicle(Command, tag="remove_vehicle", frozen=True, kw_only=True):
    transporter_id: str
    vehicle_id: str

    def ordering_key(self) -> str:
        return f"vehicle:{self.vehicle_id}"


class RegisterDriver(Command, tag="register_driver", frozen=True, kw_only=True):
    transporter_id: str
    driver_id: str
    name: str
    phone: str

    def ordering_key(self) -> str:
        return f"driver:{self.driver_id}"


class CreateBroadcast(Command, tag="create_broadcast", frozen=True, kw_only=True):
    customer_id: str
    pickup: Location
    drop: Location
    trucks: tuple[TruckOrder, ...]
    note: str | None = None
    request_hash: str

    def ordering_key(self) -> str:
        return f"customer:{self.customer_id}"


class CancelBroadcast(Command, tag="cancel_broadcast", frozen=True, kw_only=True):
    customer_id: str
    broadcast_id: str
    reason: str | None = None

    def ordering_key(self) -> str:
        return f"broadcast:{self.broadcast_id}"


class AcceptSlots(Command, tag="accept_slots", frozen=True, kw_only=True):
    """Claim `quantity` open slots of `vehicle_type`, or the one slot `truck_request_id` (whose
    vehicle type the sender also gives, so a refusal can say how many of that type are left)."""

    transporter_id: str
    broadcast_id: str
    vehicle_type: str | None = None
    quantity: int = 1
    truck_request_id: str | None = None

    def ordering_key(self) -> str:
        return f"broadcast:{self.broadcast_id}"


class AssignDriver(Command, tag="assign_driver", frozen=True, kw_only=True):
    transporter_id: str
    assignment_id: str
    driver_id: str
    vehicle_id: str

    def ordering_key(self) -> str:
        return f"driver:{self.driver_id}"


class SetAvailability(Command, tag="set_availability", frozen=True, kw_only=True):
    driver_id: str
    online: bool

    def ordering_key(self) -> str:
        return f"driver:{self.driver_id}"


AnyCommand = (
    RegisterVehicle
    | RemoveVehicle
    | RegisterDriver
    | CreateBroadcast
    | CancelBroadcast
    | AcceptSlots
    | AssignDriver
    | SetAvailability
)

# Which service executes each command.
ROUTES: dict[type[Command], str] = {
    RegisterVehicle: "broadcast",
    RemoveVehicle: "broadcast",
    RegisterDriver: "broadcast",
    CreateBroadcast: "broadcast",
    CancelBroadcast: "broadcast",
    AcceptSlots: "acceptance",
    AssignDriver: "acceptance",
    SetAvailability: "presence",
}


class CommandEnvelope(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """A command on its way: `command_id` is the request's (a keyed retry reuses it), `attempt`
    this sending of it (see `libs/events/outcomes.py`)."""

    command_id: str
    attempt: str = ""
    reply_to: str | None
    deadline: float
    correlation_id: str | None = None
    command: AnyCommand


class Failure(msgspec.Struct, frozen=True, kw_only=True):
    """A refused command: its failure code (`libs/events/failures.py`), its message and any
    extra detail fields."""

    code: FailureCode
    message: str
    details: dict[str, Any] = {}


NO_RESULT = msgspec.Raw(b"null")


class Reply(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """A command's outcome: `failure` when refused, else `result` (the handler's JSON)."""

    command_id: str
    result: msgspec.Raw = NO_RESULT
    failure: Failure | None = None
    replayed: bool = False


class Rejected(Exception):
    """Raised by a command handler to refuse the command; nothing it did is kept. `message`
    words the refusal more precisely where the contract fixes no wording (`message_for`)."""

    def __init__(self, code: FailureCode, message: str | None = None, **details: Any) -> None:
        self.failure = Failure(code=code, message=message_for(code, message), details=details)
        super().__init__(f"{code}: {self.failure.message}")


_encoder = msgspec.json.Encoder()
command_decoder = msgspec.json.Decoder(CommandEnvelope)
reply_decoder = msgspec.json.Decoder(Reply)


def encode(value: msgspec.Struct) -> bytes:
    return _encoder.encode(value)


def commands_stream(prefix: str, service: str) -> str:
    return f"{prefix}commands:{service}"


def reply_channel(prefix: str, instance: str) -> str:
    return f"{prefix}replies:{instance}"


class Done(msgspec.Struct, frozen=True):
    """The result of a command whose caller needs no data back."""


class BroadcastRef(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """The broadcast a create or cancel acted on; `replayed` when it was already so."""

    broadcast_id: str
    replayed: bool = False


class AssignmentRef(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    assignment_id: str
    truck_request_id: str
    vehicle_type: str


class AcceptResult(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """The reply to `AcceptSlots`: exactly the contract's 200 body."""

    broadcast_id: str
    broadcast_state: str
    assignments: tuple[AssignmentRef, ...]


class DriverOnAssignment(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """The reply to `AssignDriver`: who now drives the assignment; `replayed` when it already
    was so (a repeat changed nothing)."""

    assignment_id: str
    broadcast_id: str
    driver_id: str
    vehicle_id: str
    replayed: bool = False


class Availability(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """The reply to `SetAvailability`: exactly the contract's 200 body (`at`: ISO 8601, ms, Z)."""

    driver_id: str
    online: bool
    at: str
