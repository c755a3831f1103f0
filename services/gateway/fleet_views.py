"""What the API shows of fleets, drivers and assignments."""

from __future__ import annotations

from services.gateway.reads import AssignmentRow, DriverRow
from services.gateway.views import LocationView, View, iso_ms, location


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


class AssignmentList(View, frozen=True, kw_only=True):
    assignments: list[AssignmentView]


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


class VehicleView(View, frozen=True, kw_only=True):
    vehicle_id: str
    vehicle_type: str
    lat: float
    lng: float


class DriverView(View, frozen=True, kw_only=True):
    driver_id: str
    name: str
    phone: str
    online: bool
    last_seen_at: str | None


class DriverListEntry(View, frozen=True, kw_only=True):
    driver_id: str
    name: str
    online: bool
    last_seen_at: str | None
    active_assignment_id: str | None


class DriverList(View, frozen=True, kw_only=True):
    drivers: list[DriverListEntry]


def driver_view(row: DriverRow) -> DriverView:
    return DriverView(
        driver_id=row.driver_id,
        name=row.name,
        phone=row.phone,
        online=row.online,
        last_seen_at=iso_ms(row.last_seen_at),
    )


def driver_list(rows: list[DriverRow]) -> DriverList:
    entries = [
        DriverListEntry(
            driver_id=r.driver_id,
            name=r.name,
            online=r.online,
            last_seen_at=iso_ms(r.last_seen_at),
            active_assignment_id=r.active_assignment_id,
        )
        for r in rows
    ]
    return DriverList(drivers=entries)
