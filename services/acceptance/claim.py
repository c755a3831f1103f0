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
    LOCK_BROADCAST,
    BroadcastRow,
    accept_truck_requests,
    broadcast_row,
    change_state,
    set_version,
)
from libs.runtime.clock import Clock

Conn = psycopg.AsyncConnection[Any]

# Runs after the broadcast's row is locked, so it sees every claim committed before ours: sent in
# one round trip with the lock, but the server starts it (and takes its snapshot) only once the
# lock is held.
_RECIPIENT_AND_OPEN_SLOTS = """
SELECT EXISTS (SELECT 1 FROM broadcast_recipients
               WHERE broadcast_id = %(b)s AND transporter_id = %(t)s),
       coalesce((SELECT array_agg(ARRAY[truck_request_id, vehicle_type] ORDER BY slot)
                 FROM truck_requests WHERE broadcast_id = %(b)s AND state = 'open'), '{}')
"""


async def _lock_and_read(
    conn: Conn, broadcast_id: str, transporter_id: str
) -> tuple[BroadcastRow | None, bool, list[tuple[str, str]]]:
    """Lock the broadcast's row; then whether the transporter was notified, and every open slot
    as (truck request id, vehicle type) in slot order. One round trip."""
    async with conn.pipeline():
        locked = await conn.execute(LOCK_BROADCAST, (broadcast_id,), prepare=True)
        read = await conn.execute(
            _RECIPIENT_AND_OPEN_SLOTS, {"b": broadcast_id, "t": transporter_id}, prepare=True
        )
    row = broadcast_row(broadcast_id, await locked.fetchone())
    found = await read.fetchone()
    assert found is not None
    return row, bool(found[0]), [(pair[0], pair[1]) for pair in found[1]]


def refuse_unless_open(row: BroadcastRow | None, clock: Clock) -> BroadcastRow:
    if row is None:
        raise Rejected("not_found", "Broadcast not found")
    if row.state == "cancelled":
        raise Rejected("request_cancelled", "Request cancelled")
    if row.state == "expired" or clock() >= row.expires_at:
        raise Rejected("request_expired", "Request expired")
    return row


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
    locked, notified, open_slots = await _lock_and_read(conn, cmd.broadcast_id, cmd.transporter_id)
    row = refuse_unless_open(locked, clock)
    if not notified:
        raise Rejected("not_notified", "This broadcast was not sent to you")
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
    """Append the claim's events and update the read models (sent together, one round trip);
    the broadcast's new state."""
    events: list[DomainEvent] = [
        SlotsAccepted(
            broadcast_id=row.broadcast_id, transporter_id=transporter_id, slots=tuple(won)
        )
    ]
    state = "partially_filled" if left else "fully_filled"
    if not left:
        events.append(BroadcastFilled(broadcast_id=row.broadcast_id))
    version = row.version + len(events)
    async with conn.pipeline():
        await accept_truck_requests(conn, row.broadcast_id, transporter_id, won, at=now)
        if state != row.state:
            end_reason = None if left else "fully_filled"
            await change_state(
                conn, row.broadcast_id, state, at=now, version=version, end_reason=end_reason
            )
        else:
            await set_version(conn, row.broadcast_id, version)
        await append(conn, f"broadcast-{row.broadcast_id}", row.version, events)
    return state
