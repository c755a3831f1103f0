"""Reads of the dispatch read models (migration 0002), one function per question: the
API's answers and the fan-out's recipients."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import class_row

from libs.readmodel.states import OPEN

Conn = psycopg.AsyncConnection[Any]


@dataclass(frozen=True)
class BroadcastRow:
    broadcast_id: str
    customer_id: str
    state: str
    end_reason: str | None
    created_at: datetime
    expires_at: datetime
    state_changed_at: datetime
    pickup: dict[str, Any]
    drop_location: dict[str, Any]
    note: str | None
    notified_count: int
    history: list[dict[str, Any]]


@dataclass(frozen=True)
class TruckRequestRow:
    truck_request_id: str
    broadcast_id: str
    vehicle_type: str
    state: str
    transporter_id: str | None
    assignment_id: str | None


@dataclass(frozen=True)
class Broadcast:
    row: BroadcastRow
    requests: list[TruckRequestRow]


@dataclass(frozen=True)
class AssignmentRow:
    assignment_id: str
    broadcast_id: str
    truck_request_id: str
    transporter_id: str
    vehicle_type: str
    state: str
    driver_id: str | None
    vehicle_id: str | None
    created_at: datetime
    customer_id: str
    pickup: dict[str, Any]
    drop_location: dict[str, Any]


@dataclass(frozen=True)
class DriverRow:
    driver_id: str
    transporter_id: str
    name: str
    phone: str
    online: bool
    last_seen_at: datetime | None
    active_assignment_id: str | None


_BROADCAST = """SELECT b.broadcast_id, b.customer_id, b.state, b.end_reason, b.created_at,
    b.expires_at, b.state_changed_at, b.pickup, b.drop_location, b.note, b.notified_count,
    b.history FROM broadcasts b"""
_REQUESTS = """SELECT truck_request_id, broadcast_id, vehicle_type, state, transporter_id,
    assignment_id FROM truck_requests WHERE broadcast_id = ANY(%s) ORDER BY broadcast_id, slot"""
_ASSIGNMENT = """SELECT a.assignment_id, a.broadcast_id, a.truck_request_id, a.transporter_id,
    a.vehicle_type, a.state, a.driver_id, a.vehicle_id, a.created_at, b.customer_id, b.pickup,
    b.drop_location FROM assignments a JOIN broadcasts b USING (broadcast_id)"""
_DRIVER = """SELECT d.driver_id, d.transporter_id, d.name, d.phone, d.online, d.last_seen_at,
    (SELECT a.assignment_id FROM assignments a WHERE a.driver_id = d.driver_id
       AND a.state = 'driver_assigned' LIMIT 1) AS active_assignment_id FROM drivers d"""


async def _broadcasts(conn: Conn, where: str, params: Sequence[object]) -> list[Broadcast]:
    async with conn.cursor(row_factory=class_row(BroadcastRow)) as cur:
        await cur.execute(f"{_BROADCAST} {where}", params)
        rows = await cur.fetchall()
    async with conn.cursor(row_factory=class_row(TruckRequestRow)) as cur:
        await cur.execute(_REQUESTS, ([r.broadcast_id for r in rows],))
        requests = await cur.fetchall()
    return [Broadcast(r, [q for q in requests if q.broadcast_id == r.broadcast_id]) for r in rows]


async def broadcast(conn: Conn, broadcast_id: str) -> Broadcast | None:
    found = await _broadcasts(conn, "WHERE b.broadcast_id = %s", (broadcast_id,))
    return found[0] if found else None


async def active_broadcast(conn: Conn, customer_id: str) -> Broadcast | None:
    where = "WHERE b.customer_id = %s AND b.state = ANY(%s) ORDER BY b.created_at DESC LIMIT 1"
    found = await _broadcasts(conn, where, (customer_id, list(OPEN)))
    return found[0] if found else None


async def notified_active_broadcasts(conn: Conn, transporter_id: str) -> list[Broadcast]:
    where = """JOIN broadcast_recipients r USING (broadcast_id)
        WHERE r.transporter_id = %s AND b.state = ANY(%s) ORDER BY b.created_at"""
    return await _broadcasts(conn, where, (transporter_id, list(OPEN)))


async def was_notified(conn: Conn, broadcast_id: str, transporter_id: str) -> bool:
    cur = await conn.execute(
        "SELECT 1 FROM broadcast_recipients WHERE broadcast_id = %s AND transporter_id = %s",
        (broadcast_id, transporter_id),
    )
    return await cur.fetchone() is not None


async def broadcast_of_truck_request(conn: Conn, truck_request_id: str) -> str | None:
    cur = await conn.execute(
        "SELECT broadcast_id FROM truck_requests WHERE truck_request_id = %s",
        (truck_request_id,),
        prepare=True,
    )
    row = await cur.fetchone()
    return str(row[0]) if row else None


async def _assignments(conn: Conn, where: str, params: Sequence[object]) -> list[AssignmentRow]:
    async with conn.cursor(row_factory=class_row(AssignmentRow)) as cur:
        await cur.execute(f"{_ASSIGNMENT} {where}", params)
        return await cur.fetchall()


async def assignment(conn: Conn, assignment_id: str) -> AssignmentRow | None:
    found = await _assignments(conn, "WHERE a.assignment_id = %s", (assignment_id,))
    return found[0] if found else None


async def active_assignments(conn: Conn, transporter_id: str) -> list[AssignmentRow]:
    where = "WHERE a.transporter_id = %s AND a.state <> 'cancelled' ORDER BY a.created_at"
    return await _assignments(conn, where, (transporter_id,))


async def driver_assignment(conn: Conn, driver_id: str) -> AssignmentRow | None:
    where = "WHERE a.driver_id = %s AND a.state = 'driver_assigned' LIMIT 1"
    found = await _assignments(conn, where, (driver_id,))
    return found[0] if found else None


async def _drivers(conn: Conn, where: str, params: Sequence[object]) -> list[DriverRow]:
    async with conn.cursor(row_factory=class_row(DriverRow)) as cur:
        await cur.execute(f"{_DRIVER} {where}", params)
        return await cur.fetchall()


async def drivers_of(conn: Conn, transporter_id: str) -> list[DriverRow]:
    return await _drivers(
        conn, "WHERE d.transporter_id = %s ORDER BY d.driver_id", (transporter_id,)
    )


async def driver(conn: Conn, driver_id: str) -> DriverRow | None:
    found = await _drivers(conn, "WHERE d.driver_id = %s", (driver_id,))
    return found[0] if found else None
