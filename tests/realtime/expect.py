"""The frames the contract says a user gets, as (type, data) pairs (see `sockets.brief`)."""

from __future__ import annotations

from typing import Any

from tests.realtime.actions import DROP, PICKUP

Expected = tuple[str, dict[str, Any]]


def state_changed(
    broadcast: dict[str, Any],
    state: str,
    previous: str | None,
    filled: int,
    end_reason: str | None = None,
) -> Expected:
    """The `broadcast_state_changed` the customer of `broadcast` should get."""
    return (
        "broadcast_state_changed",
        {
            "broadcastId": broadcast["broadcastId"],
            "state": state,
            "previousState": previous,
            "endReason": end_reason,
            "expiresAt": broadcast["expiresAt"],
            "filled": filled,
            "total": len(broadcast["truckRequests"]),
        },
    )


def truck_accepted(bid: str, slot: dict[str, Any], transporter: str) -> Expected:
    """`slot`: one of an accept reply's `assignments`."""
    data = {"broadcastId": bid, "truckRequestId": slot["truckRequestId"]}
    return "truck_accepted", {
        **data,
        "assignmentId": slot["assignmentId"],
        "transporterId": transporter,
    }


def driver_assigned(bid: str, assignment_id: str, driver_id: str, vehicle_id: str) -> Expected:
    data = {"broadcastId": bid, "assignmentId": assignment_id}
    return "driver_assigned", {**data, "driverId": driver_id, "vehicleId": vehicle_id}


def search_expired(bid: str, message: str) -> Expected:
    return "broadcast_expired", {"broadcastId": bid, "message": message, "retry": True}


def new_broadcast(broadcast: dict[str, Any], open_by_type: dict[str, int]) -> Expected:
    data = {"broadcastId": broadcast["broadcastId"], "pickup": PICKUP, "drop": DROP}
    return "new_broadcast", {
        **data,
        "openByType": open_by_type,
        "expiresAt": broadcast["expiresAt"],
    }


def updated(bid: str, open_by_type: dict[str, int]) -> Expected:
    return "broadcast_updated", {"broadcastId": bid, "openByType": open_by_type}


def removed(bid: str, reason: str) -> Expected:
    return "broadcast_removed", {"broadcastId": bid, "reason": reason}


def assignment_cancelled(bid: str, assignment_id: str) -> Expected:
    data = {"assignmentId": assignment_id, "broadcastId": bid}
    return "assignment_cancelled", {**data, "message": "Request cancelled"}


def trip_cancelled(bid: str, assignment_id: str) -> Expected:
    data = {"assignmentId": assignment_id, "broadcastId": bid}
    return "trip_cancelled", {**data, "message": "Trip cancelled"}


def driver_status(driver_id: str, online: bool, at: str) -> Expected:
    return "driver_status_changed", {"driverId": driver_id, "online": online, "at": at}
