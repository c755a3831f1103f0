"""What the API shows of fleets, drivers and assignments."""

from __future__ import annotations

from libs.readmodel.reads import DriverRow
from libs.readmodel.views import AssignmentView, View, iso_ms


class AssignmentList(View, frozen=True, kw_only=True):
    assignments: list[AssignmentView]


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
