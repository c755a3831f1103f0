"""Search: a customer's request for trucks becomes a broadcast to the nearby transporters.

One active broadcast per customer: the runner runs one customer's commands one at a time, and
the partial unique index `broadcasts_one_active_per_customer` settles the rest (a second
instance racing on the same customer hits it, rolls back, and decides again).
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import psycopg

from libs.events.catalogue import (
    BroadcastCreated,
    BroadcastExpired,
    BroadcastStarted,
    DomainEvent,
    TruckSlot,
)
from libs.events.commands import BroadcastRef, CreateBroadcast, Rejected
from libs.events.store import append
from libs.readmodel.broadcasts import insert_broadcast
from libs.readmodel.states import UNENDED_SQL
from services.broadcast.deps import BroadcastDeps
from services.broadcast.matching import nearby_transporters

Conn = psycopg.AsyncConnection[Any]
_ACTIVE_OF_CUSTOMER = f"""SELECT broadcast_id, request_hash FROM broadcasts
    WHERE customer_id = %s AND state IN {UNENDED_SQL}"""  # noqa: S608 (constants only)


async def active_broadcast(conn: Conn, customer_id: str) -> tuple[str, str] | None:
    """(broadcast id, request hash) of the customer's active broadcast, if any."""
    cur = await conn.execute(
        _ACTIVE_OF_CUSTOMER,
        (customer_id,),
        prepare=True,
    )
    row = await cur.fetchone()
    return (row[0], row[1]) if row else None


def new_broadcast(deps: BroadcastDeps, cmd: CreateBroadcast) -> BroadcastCreated:
    now = deps.clock()
    slots = tuple(
        TruckSlot(truck_request_id=str(uuid.uuid4()), vehicle_type=order.vehicle_type)
        for order in cmd.trucks
        for _ in range(order.quantity)
    )
    return BroadcastCreated(
        broadcast_id=str(uuid.uuid4()),
        customer_id=cmd.customer_id,
        pickup=cmd.pickup,
        drop=cmd.drop,
        note=cmd.note,
        truck_requests=slots,
        created_at=now,
        expires_at=now + timedelta(seconds=deps.timeout_s),
        request_hash=cmd.request_hash,
    )


async def create_broadcast(deps: BroadcastDeps, conn: Conn, cmd: CreateBroadcast) -> BroadcastRef:
    """Open a broadcast, or return the customer's identical active one, or refuse."""
    active = await active_broadcast(conn, cmd.customer_id)
    if active is not None:
        if active[1] == cmd.request_hash:
            return BroadcastRef(broadcast_id=active[0], replayed=True)
        raise Rejected("active_broadcast_exists", broadcastId=active[0])
    created = new_broadcast(deps, cmd)
    types = sorted({slot.vehicle_type for slot in created.truck_requests})
    notified = await nearby_transporters(conn, cmd.pickup, types, deps.radius_km)
    events: list[DomainEvent] = [
        created,
        BroadcastStarted(broadcast_id=created.broadcast_id, notified_transporters=tuple(notified)),
    ]
    states = ["created", "broadcasting"]
    if not notified:
        events.append(
            BroadcastExpired(broadcast_id=created.broadcast_id, end_reason="no_transporters")
        )
        states.append("expired")
    await append(conn, f"broadcast-{created.broadcast_id}", 0, events)
    await insert_broadcast(
        conn,
        created,
        states,
        notified,
        version=len(events),
        end_reason=None if notified else "no_transporters",
    )
    return BroadcastRef(broadcast_id=created.broadcast_id)
