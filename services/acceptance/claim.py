"""The atomic claim of truck requests (CONTRACT.md section 5).

The claim locks the broadcast's row, so claims, cancels and expiry of one broadcast queue and
each decides on what the previous one committed: every slot is won exactly once, and a cancel
that commits first turns every later claim into `request_cancelled`. The events are appended
with the version read under the lock; the store's unique (stream, version) backs that up.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import psycopg

from libs.events.catalogue import AcceptedSlot, BroadcastFilled, DomainEvent, SlotsAccepted
from libs.events.commands import AcceptResult, AcceptSlots, AssignmentRef, Rejected
from libs.events.store import append
from libs.readmodel.broadcasts import (
    BroadcastRow,
    accept_truck_requests,
    change_state,
    lock_broadcast,
    set_version,
)
from libs.runtime.clock import Clock

Conn = psycopg.AsyncConnection[Any]

_OPEN_SLOTS = """
SELECT truck_request_id, vehicle_type FROM truck_requests
WHERE broadcast_id = %s AND state = 'open' ORDER BY slot
"""


async def _is_recipient(conn: Conn, broadcast_id: str, transporter_id: str) -> bool:
    cur = await conn.execute(
        "SELECT 1 FROM broadcast_recipients WHERE broadcast_id = %s AND transporter_id = %s",
        (broadcast_id, transporter_id),
        prepare=True,
    )
    return await cur.fetchone() is not None


def refuse_unless_open(row: BroadcastRow | None, clock: Clock) -> BroadcastRow:
    if row is None:
        raise Rejected("not_found", "Broadcast not found")
    if row.state == "cancelled":
        raise Rejected("request_cancelled", "Request cancelled")
    if row.state == "expired" or clock() >= row.expires_at:
        raise Rejected("request_expired", "Request expired")
    return row


async def _open_slots(conn: Conn, broadcast_id: str) -> list[tuple[str, str]]:
    """Every open slot of the broadcast as (truck request id, vehicle type), in slot order."""
    cur = await conn.execute(_OPEN_SLOTS, (broadcast_id,), prepare=True)
    return [(r[0], r[1]) for r in await cur.fetchall()]


def choose(cmd: AcceptSlots, open_slots: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The slots to win, all or none: `no_longer_available` says how many of the type are left.

    A single-slot claim names its truck request (and, for that count, its vehicle type).
    """
    of_type = [s for s in open_slots if s[1] == cmd.vehicle_type]
    if cmd.truck_request_id is not None:
        wanted = [s for s in open_slots if s[0] == cmd.truck_request_id]
    else:
        wanted = of_type
    if len(wanted) < cmd.quantity:
        raise Rejected("no_longer_available", "No longer available", available=len(of_type))
    return wanted[: cmd.quantity]


async def accept_slots(clock: Clock, conn: Conn, cmd: AcceptSlots) -> AcceptResult:
    """Claim the slots `cmd` asks for, all or none, or refuse with the contract's reason."""
    row = refuse_unless_open(await lock_broadcast(conn, cmd.broadcast_id), clock)
    if not await _is_recipient(conn, row.broadcast_id, cmd.transporter_id):
        raise Rejected("not_notified", "This broadcast was not sent to you")
    if row.state == "fully_filled":
        raise Rejected("no_longer_available", "No longer available", available=0)
    open_slots = await _open_slots(conn, row.broadcast_id)
    won = [
        AcceptedSlot(truck_request_id=tr, assignment_id=str(uuid.uuid4()), vehicle_type=vt)
        for tr, vt in choose(cmd, open_slots)
    ]
    state = await _record(
        conn, row, cmd.transporter_id, won, left=len(open_slots) - len(won), now=clock()
    )
    refs = tuple(
        AssignmentRef(
            assignment_id=s.assignment_id,
            truck_request_id=s.truck_request_id,
            vehicle_type=s.vehicle_type,
        )
        for s in won
    )
    return AcceptResult(broadcast_id=row.broadcast_id, broadcast_state=state, assignments=refs)


async def _record(
    conn: Conn,
    row: BroadcastRow,
    transporter_id: str,
    won: list[AcceptedSlot],
    *,
    left: int,
    now: datetime,
) -> str:
    """Append the claim's events and update the read models; the broadcast's new state."""
    events: list[DomainEvent] = [
        SlotsAccepted(
            broadcast_id=row.broadcast_id, transporter_id=transporter_id, slots=tuple(won)
        )
    ]
    state = "partially_filled" if left else "fully_filled"
    if not left:
        events.append(BroadcastFilled(broadcast_id=row.broadcast_id))
    await append(conn, f"broadcast-{row.broadcast_id}", row.version, events)
    await accept_truck_requests(conn, row.broadcast_id, transporter_id, won, at=now)
    version = row.version + len(events)
    if state != row.state:
        end_reason = None if left else "fully_filled"
        await change_state(
            conn, row.broadcast_id, state, at=now, version=version, end_reason=end_reason
        )
    else:
        await set_version(conn, row.broadcast_id, version)
    return state
