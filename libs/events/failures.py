"""The codes a service may refuse a command with, and what each one tells a client.

This is the contract between the services and the gateway: a `Failure` carries a
`FailureCode` (msgspec refuses any other on decode), and `REFUSALS` gives each code its HTTP
status and its message. Where CONTRACT.md fixes a message word for word (`fixed`), that text is
the only one any service or the gateway answers; elsewhere a refusal may say more precisely what
was refused ("Vehicle not found") and the table's message is the default.
"""

from __future__ import annotations

from typing import Final, Literal, NamedTuple

FailureCode = Literal[
    "not_found",
    "forbidden",
    "not_notified",
    "active_broadcast_exists",
    "no_longer_available",
    "request_cancelled",
    "request_expired",
    "vehicle_taken",
    "driver_taken",
    "driver_offline",
    "driver_busy",
    "vehicle_busy",
    "vehicle_type_mismatch",
    "unavailable",
]


class Refusal(NamedTuple):
    status: int
    message: str
    fixed: bool = False  # one wording for every refusal with the code (the contract's)


# Every failure code (a test checks that none is missing), CONTRACT.md sections 2 to 6.
REFUSALS: Final[dict[FailureCode, Refusal]] = {
    "not_found": Refusal(404, "Not found"),
    "forbidden": Refusal(403, "Not allowed"),
    "not_notified": Refusal(403, "This broadcast was not sent to you"),
    "active_broadcast_exists": Refusal(
        409, "Request already in progress. Cancel it first.", fixed=True
    ),
    "no_longer_available": Refusal(409, "No longer available", fixed=True),
    "request_cancelled": Refusal(409, "Request cancelled", fixed=True),
    "request_expired": Refusal(409, "Request expired", fixed=True),
    "vehicle_taken": Refusal(409, "Vehicle is registered to another transporter"),
    "driver_taken": Refusal(409, "Driver is registered to another transporter"),
    "driver_offline": Refusal(409, "Driver is offline"),
    "driver_busy": Refusal(409, "Driver is busy"),
    "vehicle_busy": Refusal(409, "Vehicle is busy"),
    "vehicle_type_mismatch": Refusal(409, "Vehicle is not of the assignment's type"),
    # Also the gateway's own 503 (section 2: "a dependency is down; nothing was changed").
    "unavailable": Refusal(503, "A dependency is unavailable; nothing was changed", fixed=True),
}


def message_for(code: FailureCode, given: str | None = None) -> str:
    """The message a refusal with `code` answers: the contract's when it fixes one, else
    `given`, else the table's."""
    refusal = REFUSALS[code]
    return refusal.message if refusal.fixed or not given else given
