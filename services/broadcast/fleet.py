"""The fleet registry: transporters' vehicles and drivers (CONTRACT.md section 3).

Each vehicle and each driver is its own event stream (`fleet-vehicle.<id>`, `fleet-driver.<id>`);
the `vehicles` and `drivers` tables are their read models, written in the same transaction.
"""

from __future__ import annotations

from typing import Any

import psycopg

from libs.events.catalogue import DriverRegistered, VehicleRegistered, VehicleRemoved
from libs.events.commands import Done, RegisterDriver, RegisterVehicle, Rejected, RemoveVehicle
from libs.events.store import append, stream_version
from services.broadcast.deps import BroadcastDeps

Conn = psycopg.AsyncConnection[Any]


async def _owner_and_version(
    conn: Conn, table: str, key: str, ident: str
) -> tuple[str, int] | None:
    cur = await conn.execute(
        f"SELECT transporter_id, version FROM {table} WHERE {key} = %s FOR UPDATE",  # noqa: S608
        (ident,),
    )
    row = await cur.fetchone()
    return (row[0], row[1]) if row else None


async def _version_if_mine(
    conn: Conn, table: str, ident: str, transporter_id: str, taken: Rejected
) -> int:
    """The stream version a (re-)registration by `transporter_id` appends at; `taken` if the id
    belongs to another transporter. An id with no row is new or was removed: its stream goes on
    from its last event (a removed vehicle's id can be registered again, by anyone). A first
    registration racing another appends at the same version; the loser's conflict is retried and
    then finds the id taken."""
    key, stream = {"vehicles": ("vehicle_id", "vehicle"), "drivers": ("driver_id", "driver")}[table]
    current = await _owner_and_version(conn, table, key, ident)
    if current and current[0] != transporter_id:
        raise taken
    if current:
        return current[1]
    return await stream_version(conn, f"fleet-{stream}.{ident}")


async def register_vehicle(_deps: BroadcastDeps, conn: Conn, cmd: RegisterVehicle) -> Done:
    """Add or move a vehicle; a vehicle id owned by another transporter is `vehicle_taken`."""
    version = await _version_if_mine(
        conn,
        "vehicles",
        cmd.vehicle_id,
        cmd.transporter_id,
        Rejected("vehicle_taken"),
    )
    await append(
        conn,
        f"fleet-vehicle.{cmd.vehicle_id}",
        version,
        [
            VehicleRegistered(
                vehicle_id=cmd.vehicle_id,
                transporter_id=cmd.transporter_id,
                vehicle_type=cmd.vehicle_type,
                lat=cmd.lat,
                lng=cmd.lng,
            )
        ],
    )
    await conn.execute(
        "INSERT INTO vehicles (vehicle_id, transporter_id, vehicle_type, lat, lng, version)"
        " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (vehicle_id) DO UPDATE SET"
        " vehicle_type = EXCLUDED.vehicle_type, lat = EXCLUDED.lat, lng = EXCLUDED.lng,"
        " version = EXCLUDED.version, updated_at = now()",
        (cmd.vehicle_id, cmd.transporter_id, cmd.vehicle_type, cmd.lat, cmd.lng, version + 1),
    )
    return Done()


async def remove_vehicle(_deps: BroadcastDeps, conn: Conn, cmd: RemoveVehicle) -> Done:
    """Remove a vehicle of this transporter; someone else's vehicle is `not_found`."""
    current = await _owner_and_version(conn, "vehicles", "vehicle_id", cmd.vehicle_id)
    if not current or current[0] != cmd.transporter_id:
        raise Rejected("not_found", "Vehicle not found")
    await append(
        conn,
        f"fleet-vehicle.{cmd.vehicle_id}",
        current[1],
        [VehicleRemoved(vehicle_id=cmd.vehicle_id, transporter_id=cmd.transporter_id)],
    )
    await conn.execute("DELETE FROM vehicles WHERE vehicle_id = %s", (cmd.vehicle_id,))
    return Done()


async def register_driver(_deps: BroadcastDeps, conn: Conn, cmd: RegisterDriver) -> Done:
    """Add or update a driver; a driver registered to another transporter is `driver_taken`."""
    version = await _version_if_mine(
        conn,
        "drivers",
        cmd.driver_id,
        cmd.transporter_id,
        Rejected("driver_taken"),
    )
    await append(
        conn,
        f"fleet-driver.{cmd.driver_id}",
        version,
        [
            DriverRegistered(
                driver_id=cmd.driver_id,
                transporter_id=cmd.transporter_id,
                name=cmd.name,
                phone=cmd.phone,
            )
        ],
    )
    await conn.execute(
        "INSERT INTO drivers (driver_id, transporter_id, name, phone, version)"
        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (driver_id) DO UPDATE SET"
        " name = EXCLUDED.name, phone = EXCLUDED.phone, version = EXCLUDED.version,"
        " updated_at = now()",
        (cmd.driver_id, cmd.transporter_id, cmd.name, cmd.phone, version + 1),
    )
    return Done()
