"""Writes of the `assignments` read model beyond those of a claim (`broadcasts.py`)."""

from __future__ import annotations

from typing import Any

import psycopg

from libs.readmodel.violations import translated

Conn = psycopg.AsyncConnection[Any]


async def put_driver_on(conn: Conn, assignment_id: str, driver_id: str, vehicle_id: str) -> None:
    """Make the assignment `driver_assigned` with the driver and vehicle; another active
    assignment of either is `driver_busy` or `vehicle_busy` (`violations.REFUSED_BY`).

    It runs in a savepoint, so the violation leaves the transaction usable to refuse cleanly.
    """
    with translated(f"assignment-{assignment_id}"):
        async with conn.transaction():
            await conn.execute(
                "UPDATE assignments SET state = 'driver_assigned', driver_id = %s,"
                " vehicle_id = %s WHERE assignment_id = %s",
                (driver_id, vehicle_id, assignment_id),
                prepare=True,
            )
