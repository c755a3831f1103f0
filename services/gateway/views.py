"""What the API shows: the contract's JSON shapes, built from read-model rows."""

from __future__ import annotations

from collections import Counter
from typing import Any

import msgspec

from libs.readmodel.reads import Broadcast, TruckRequestRow
from libs.readmodel.views import LocationView, View, iso_ms, location


class TruckRequestView(View, frozen=True, kw_only=True):
    truck_request_id: str
    vehicle_type: str
    state: str
    transporter_id: str | None
    assignment_id: str | None


class HistoryEntry(View, frozen=True, kw_only=True):
    state: str
    at: str


class BroadcastView(View, frozen=True, kw_only=True):
    broadcast_id: str
    customer_id: str
    state: str
    end_reason: str | None
    created_at: str | None
    expires_at: str | None
    state_changed_at: str | None
    pickup: LocationView
    drop: LocationView
    note: str | None
    notified_transporters: int
    truck_requests: list[TruckRequestView]
    history: list[HistoryEntry]


class NotifiedBroadcastView(BroadcastView, frozen=True, kw_only=True):
    open_by_type: dict[str, int]


class BroadcastList(View, frozen=True, kw_only=True):
    broadcasts: list[NotifiedBroadcastView]


def _request(request: TruckRequestRow, viewer: str | None) -> TruckRequestView:
    """A slot; for a transporter `viewer`, another transporter's slot shows no ids."""
    own = viewer is None or request.transporter_id == viewer
    return TruckRequestView(
        truck_request_id=request.truck_request_id,
        vehicle_type=request.vehicle_type,
        state=request.state,
        transporter_id=request.transporter_id if own else None,
        assignment_id=request.assignment_id if own else None,
    )


def _fields(broadcast: Broadcast, viewer: str | None) -> dict[str, Any]:
    row = broadcast.row
    return {
        "broadcast_id": row.broadcast_id,
        "customer_id": row.customer_id,
        "state": row.state,
        "end_reason": row.end_reason,
        "created_at": iso_ms(row.created_at),
        "expires_at": iso_ms(row.expires_at),
        "state_changed_at": iso_ms(row.state_changed_at),
        "pickup": location(row.pickup),
        "drop": location(row.drop_location),
        "note": row.note,
        "notified_transporters": row.notified_count,
        "truck_requests": [_request(r, viewer) for r in broadcast.requests],
        "history": msgspec.convert(row.history, list[HistoryEntry]),
    }


def broadcast_view(broadcast: Broadcast, viewer: str | None = None) -> BroadcastView:
    """The Broadcast; `viewer` is the transporter looking, None for its customer."""
    return BroadcastView(**_fields(broadcast, viewer))


def open_by_type(broadcast: Broadcast) -> dict[str, int]:
    """Open slots per requested vehicle type (types with none left show 0)."""
    counts = Counter(r.vehicle_type for r in broadcast.requests if r.state == "open")
    return {r.vehicle_type: counts[r.vehicle_type] for r in broadcast.requests}


def notified_view(broadcast: Broadcast, transporter_id: str) -> NotifiedBroadcastView:
    fields = _fields(broadcast, transporter_id)
    return NotifiedBroadcastView(**fields, open_by_type=open_by_type(broadcast))
