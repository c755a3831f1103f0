"""Cancelling a broadcast (its customer's request).

It locks the broadcast's row first, so it queues with claims and expiry of the same broadcast:
whichever commits first wins, and the other decides on what it left. A broadcast still active
past its `expiresAt` is over by timeout (`timed_out`, the rule claims and expiry use too): the
cancel is refused `request_expired` and the timer ends it `expired`.
"""

from __future__ import annotations

from typing import Any

import psycopg

from libs.events.catalogue import BroadcastCancelled, CancelledAssignment
from libs.events.commands import BroadcastRef, CancelBroadcast, Rejected
from libs.events.store import append
from libs.readmodel.broadcasts import (
    change_state,
    close_truck_requests,
    lock_broadcast,
    timed_out,
)
from services.broadcast.deps import BroadcastDeps

Conn = psycopg.AsyncConnection[Any]


async def live_assignments(conn: Conn, broadcast_id: str) -> tuple[CancelledAssignment, ...]:
    cur = await conn.execute(
        "SELECT assignment_id, transporter_id, driver_id FROM assignments"
        " WHERE broadcast_id = %s AND state <> 'cancelled' ORDER BY assignment_id",
        (broadcast_id,),
    )
    return tuple(
        CancelledAssignment(assignment_id=a, transporter_id=t, driver_id=d)
        for a, t, d in await cur.fetchall()
    )


async def cancel_broadcast(deps: BroadcastDeps, conn: Conn, cmd: CancelBroadcast) -> BroadcastRef:
    """Cancel: open requests close, every assignment is cancelled. Repeats answer the same."""
    row = await lock_broadcast(conn, cmd.broadcast_id)
    if row is None or row.customer_id != cmd.customer_id:
        raise Rejected("not_found", "Broadcast not found")
    if row.state == "cancelled":
        return BroadcastRef(broadcast_id=row.broadcast_id, replayed=True)
    if timed_out(row, deps.clock()):
        raise Rejected("request_expired")
    cancelled = await live_assignments(conn, row.broadcast_id)
    event = BroadcastCancelled(
        broadcast_id=row.broadcast_id,
        customer_id=row.customer_id,
        reason=cmd.reason,
        cancelled_assignments=cancelled,
    )
    await append(conn, f"broadcast-{row.broadcast_id}", row.version, [event])
    now = deps.clock()
    await change_state(
        conn,
        row.broadcast_id,
        "cancelled",
        at=now,
        version=row.version + 1,
        end_reason="cancelled_by_customer",
    )
    await close_truck_requests(conn, row.broadcast_id, ("open", "accepted"), "cancelled")
    await conn.execute(
        "UPDATE assignments SET state = 'cancelled'"
        " WHERE broadcast_id = %s AND state <> 'cancelled'",
        (row.broadcast_id,),
    )
    return BroadcastRef(broadcast_id=row.broadcast_id)
