"""Putting a driver and a vehicle on an assignment (CONTRACT.md section 6).

It locks the broadcast's row first, like claims and cancel, so it queues with a cancel of the
same broadcast: a cancel committed first makes it `request_cancelled`; a cancel committed after
it cancels the assignment, which frees the driver and the vehicle. It then locks the driver's
row and the vehicle's row, so two assignments of one driver, or of one vehicle, queue and the
second sees the first: a driver, and a vehicle, holds one active assignment at a time. The
partial unique indexes `assignments_one_active_per_driver` and
`assignments_one_active_per_vehicle` are the backstop, translated to `driver_busy` and
`vehicle_busy` too where the update is made (`libs/readmodel/assignments.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
import psycopg

from libs.events.catalogue import DriverAssigned
from libs.events.commands import AssignDriver, DriverOnAssignment, Rejected
from libs.events.store import append
from libs.readmodel.assignments import put_driver_on
from libs.readmodel.broadcasts import LockedBroadcast, lock_broadcast, set_version
from services.acceptance.deps import AcceptanceDeps

Conn = psycopg.AsyncConnection[Any]


@dataclass(frozen=True)
class LockedAssignment:
    """What an assignment's writer decides by, read under its row's lock (the readers' row is
    `reads.AssignmentRow`)."""

    broadcast_id: str
    transporter_id: str
    vehicle_type: str
    state: str
    driver_id: str | None
    vehicle_id: str | None


async def _assignment(conn: Conn, assignment_id: str) -> LockedAssignment | None:
    cur = await conn.execute(
        "SELECT broadcast_id, transporter_id, vehicle_type, state, driver_id, vehicle_id"
        " FROM assignments WHERE assignment_id = %s",
        (assignment_id,),
        prepare=True,
    )
    row = await cur.fetchone()
    return LockedAssignment(*row) if row else None


async def _locked(conn: Conn, cmd: AssignDriver) -> tuple[LockedBroadcast, LockedAssignment]:
    """The assignment's broadcast, locked, and the assignment as it is under that lock."""
    found = await _assignment(conn, cmd.assignment_id)
    if found is None or found.transporter_id != cmd.transporter_id:
        raise Rejected("not_found", "Assignment not found")
    broadcast = await lock_broadcast(conn, found.broadcast_id)
    current = await _assignment(conn, cmd.assignment_id)
    if broadcast is None or current is None:
        raise Rejected("not_found", "Assignment not found")
    if broadcast.state == "cancelled" or current.state == "cancelled":
        raise Rejected("request_cancelled")
    return broadcast, current


async def _one(conn: Conn, sql: str, *params: str) -> tuple[Any, ...] | None:
    cur = await conn.execute(sql, params, prepare=True)
    return await cur.fetchone()


_DRIVER = "SELECT transporter_id, online FROM drivers WHERE driver_id = %s FOR UPDATE"
_VEHICLE = "SELECT transporter_id, vehicle_type FROM vehicles WHERE vehicle_id = %s FOR UPDATE"
_DRIVER_ELSEWHERE = (
    "SELECT 1 FROM assignments WHERE driver_id = %s AND state = 'driver_assigned'"
    " AND assignment_id <> %s"
)
_VEHICLE_ELSEWHERE = (
    "SELECT 1 FROM assignments WHERE vehicle_id = %s AND state = 'driver_assigned'"
    " AND assignment_id <> %s"
)


async def _lock_driver(conn: Conn, cmd: AssignDriver) -> bool:
    """Lock the driver's row; someone else's driver is `forbidden`. Whether it is online."""
    driver = await _one(conn, _DRIVER, cmd.driver_id)
    if driver is None or driver[0] != cmd.transporter_id:
        raise Rejected("forbidden", "Driver is not registered with you")
    return bool(driver[1])


async def _lock_vehicle(conn: Conn, cmd: AssignDriver, vehicle_type: str) -> None:
    """Lock the vehicle's row; someone else's vehicle is `forbidden`, one that is not of
    `vehicle_type` (the assignment's) is `vehicle_type_mismatch`."""
    vehicle = await _one(conn, _VEHICLE, cmd.vehicle_id)
    if vehicle is None or vehicle[0] != cmd.transporter_id:
        raise Rejected("forbidden", "Vehicle is not registered with you")
    if vehicle[1] != vehicle_type:
        raise Rejected("vehicle_type_mismatch")


async def _refuse_unless_available(conn: Conn, cmd: AssignDriver, vehicle_type: str) -> None:
    """Refuse someone else's driver or vehicle, a vehicle of another type, an offline driver,
    and a driver or vehicle on another active assignment.

    The driver's row, then the vehicle's, stay locked, so another assignment of the same driver
    or of the same vehicle waits for this one and then sees it.
    """
    online = await _lock_driver(conn, cmd)
    await _lock_vehicle(conn, cmd, vehicle_type)
    if not online:
        raise Rejected("driver_offline")
    if await _one(conn, _DRIVER_ELSEWHERE, cmd.driver_id, cmd.assignment_id):
        raise Rejected("driver_busy")
    if await _one(conn, _VEHICLE_ELSEWHERE, cmd.vehicle_id, cmd.assignment_id):
        raise Rejected("vehicle_busy")


def _already_so(current: LockedAssignment, cmd: AssignDriver) -> bool:
    return current.state == "driver_assigned" and (current.driver_id, current.vehicle_id) == (
        cmd.driver_id,
        cmd.vehicle_id,
    )


async def _record(conn: Conn, broadcast: LockedBroadcast, cmd: AssignDriver) -> None:
    """Update the assignment and append `DriverAssigned` to its broadcast's stream."""
    await put_driver_on(conn, cmd.assignment_id, cmd.driver_id, cmd.vehicle_id)
    event = DriverAssigned(
        assignment_id=cmd.assignment_id,
        broadcast_id=broadcast.broadcast_id,
        transporter_id=cmd.transporter_id,
        driver_id=cmd.driver_id,
        vehicle_id=cmd.vehicle_id,
    )
    await append(conn, f"broadcast-{broadcast.broadcast_id}", broadcast.version, [event])
    await set_version(conn, broadcast.broadcast_id, broadcast.version + 1)


async def assign_driver(_deps: AcceptanceDeps, conn: Conn, cmd: AssignDriver) -> DriverOnAssignment:
    """Put the driver and vehicle on the assignment (a repeat answers the same), or refuse.

    Another driver or vehicle already on it is replaced, which frees that driver or vehicle.
    """
    broadcast, current = await _locked(conn, cmd)
    result = DriverOnAssignment(
        assignment_id=cmd.assignment_id,
        broadcast_id=broadcast.broadcast_id,
        driver_id=cmd.driver_id,
        vehicle_id=cmd.vehicle_id,
    )
    if _already_so(current, cmd):
        return msgspec.structs.replace(result, replayed=True)
    await _refuse_unless_available(conn, cmd, current.vehicle_type)
    await _record(conn, broadcast, cmd)
    return result
