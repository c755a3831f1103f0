"""The contract's JSON shapes that both the API's answers and the WebSocket's frames carry: the
base of every view, a location, and an assignment as `GET /v1/assignments/{id}` shows it (the
`driver_assigned` frame holds the same)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from msgspec import Struct

from libs.events import clock
from libs.readmodel.reads import AssignmentRow


def iso_ms(at: datetime | None) -> str | None:
    """`2026-11-24T10:00:00.123Z` (UTC, milliseconds), or None."""
    return None if at is None else clock.iso_ms(at)


class View(Struct, frozen=True, kw_only=True, rename="camel"):
    """Base of every response shape."""


class LocationView(View, frozen=True, kw_only=True):
    lat: float
    lng: float
    address: str | None = None


def location(raw: dict[str, Any]) -> LocationView:
    return msgspec.convert(raw, LocationView)


class AssignmentView(View, frozen=True, kw_only=True):
    assignment_id: str
    broadcast_id: str
    truck_request_id: str
    transporter_id: str
    vehicle_type: str
    state: str
    driver_id: str | None
    vehicle_id: str | None
    pickup: LocationView
    drop: LocationView
    created_at: str | None


def assignment_view(row: AssignmentRow) -> AssignmentView:
    return AssignmentView(
        assignment_id=row.assignment_id,
        broadcast_id=row.broadcast_id,
        truck_request_id=row.truck_request_id,
        transporter_id=row.transporter_id,
        vehicle_type=row.vehicle_type,
        state=row.state,
        driver_id=row.driver_id,
        vehicle_id=row.vehicle_id,
        pickup=location(row.pickup),
        drop=location(row.drop_location),
        created_at=iso_ms(row.created_at),
    )
