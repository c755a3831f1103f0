"""A driver going online or offline (CONTRACT.md section 6), by request or by timing out.

Each driver's availability is its own event stream `driver-<id>`, versioned by
`drivers.presence_version`. Every change locks the driver's row first, so requests and the
heartbeat sweep (on any number of presence instances) queue: each decides on what the previous
one committed, and one transition is one event. The stream's unique (stream, version) is the
backstop.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import psycopg

from libs.events.catalogue import DriverAvailabilityChanged
from libs.events.clock import iso_ms
from libs.events.commands import Availability, Rejected, SetAvailability
from libs.events.store import append
from libs.readmodel.presence import Presence, lock_presence, set_presence
from services.presence.deps import PresenceDeps

Conn = psycopg.AsyncConnection[Any]
Reason = Literal["requested", "heartbeat_timeout", "connected"]


async def change_availability(
    conn: Conn, row: Presence, *, online: bool, reason: Reason, seen_at: datetime | None
) -> datetime:
    """Record that the driver of `row` (locked) turned `online`; when the change was recorded.

    That time is the event's `recordedAt`, so the reply and the pushed event agree on it. It is
    also the driver's last sighting unless `seen_at` says when the driver was last seen.
    """
    event = DriverAvailabilityChanged(
        driver_id=row.driver_id, transporter_id=row.transporter_id, online=online, reason=reason
    )
    [envelope] = await append(conn, f"driver-{row.driver_id}", row.version, [event])
    await set_presence(
        conn,
        row.driver_id,
        online=online,
        seen_at=seen_at or envelope.recorded_at,
        version=row.version + 1,
    )
    return envelope.recorded_at


async def set_availability(deps: PresenceDeps, conn: Conn, cmd: SetAvailability) -> Availability:
    """Turn the driver online or offline; a repeat with no change records no event."""
    row = await lock_presence(conn, cmd.driver_id)
    if row is None:
        raise Rejected("not_found", "Driver is not registered with a transporter")
    if row.online != cmd.online:
        at = await change_availability(
            conn, row, online=cmd.online, reason="requested", seen_at=None
        )
    else:
        at = deps.clock()
        await set_presence(conn, row.driver_id, online=row.online, seen_at=at, version=row.version)
    return Availability(driver_id=row.driver_id, online=cmd.online, at=iso_ms(at))
