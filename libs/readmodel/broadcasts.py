"""The broadcast read models (`broadcasts`, `truck_requests`, `broadcast_recipients`,
`assignments`), written by the services in the same transaction as the events they follow."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
import psycopg

from libs.events.catalogue import AcceptedSlot, BroadcastCreated, Location
from libs.events.clock import iso_ms
from libs.readmodel.states import OPEN
from libs.readmodel.violations import translated

Conn = psycopg.AsyncConnection[Any]


@dataclass(frozen=True)
class LockedBroadcast:
    """What a writer decides by, read under the row's lock: the broadcast's owner, state,
    version and deadline. The readers' row (`reads.BroadcastRow`) has every column; this one
    reads four, on the claim's hot path."""

    broadcast_id: str
    customer_id: str
    state: str
    version: int
    expires_at: datetime


def past_expiry(row: LockedBroadcast, now: datetime) -> bool:
    """Still active at or after its `expiresAt`: over by timeout, though not yet ended so (the
    timer does that within a second). `PAST_EXPIRY` says the same in SQL."""
    return row.state in OPEN and now >= row.expires_at


def timed_out(row: LockedBroadcast, now: datetime) -> bool:
    """Over by timeout: ended `expired`, or past its expiry. Cancel and claims decide by this one
    rule (and the timer's expiry by its SQL twin), so in the second between `expiresAt` and the
    timer's expiry they all agree that the broadcast is over."""
    return row.state == "expired" or past_expiry(row, now)


# `past_expiry` in SQL, for the expiry of many broadcasts in one statement (`%(active)s`:
# OPEN as a list).
PAST_EXPIRY = "state = ANY(%(active)s::text[]) AND expires_at <= %(now)s"


def history_entry(state: str, at: datetime) -> dict[str, str]:
    return {"state": state, "at": iso_ms(at)}


def _location(value: Location) -> str:
    return msgspec.json.encode(value).decode()


LOCK_BROADCAST = (
    "SELECT customer_id, state, version, expires_at FROM broadcasts"
    " WHERE broadcast_id = %s FOR UPDATE"
)


async def lock_broadcast(conn: Conn, broadcast_id: str) -> LockedBroadcast | None:
    """Read a broadcast and lock its row until the transaction ends: writers queue here."""
    cur = await conn.execute(LOCK_BROADCAST, (broadcast_id,), prepare=True)
    return broadcast_row(broadcast_id, await cur.fetchone())


def broadcast_row(broadcast_id: str, row: Sequence[Any] | None) -> LockedBroadcast | None:
    """The row `LOCK_BROADCAST` read, if there was one."""
    return LockedBroadcast(broadcast_id, *row) if row else None


# The CTEs (for a statement of the caller's) that end `expired` (reason timeout) every broadcast
# of %(ids)s past its expiry at %(now)s, with one more version each: the rows are locked in id
# order first, so two batches never deadlock, and a broadcast that ended meanwhile is left alone.
# Their open slots expire. `expired` holds (broadcast_id, version) of each one ended.
EXPIRE_PAST_EXPIRY = f"""
locked AS MATERIALIZED (
    SELECT broadcast_id FROM broadcasts WHERE broadcast_id = ANY(%(ids)b::text[])
    ORDER BY broadcast_id FOR UPDATE
), expired AS (
    UPDATE broadcasts b SET state = 'expired', end_reason = 'timeout',
        state_changed_at = %(now)s, history = b.history || %(entry)s::jsonb,
        version = b.version + 1
    FROM locked WHERE b.broadcast_id = locked.broadcast_id AND {PAST_EXPIRY}
    RETURNING b.broadcast_id, b.version
), expired_slots AS (
    UPDATE truck_requests t SET state = 'expired' FROM expired
    WHERE t.broadcast_id = expired.broadcast_id AND t.state = 'open'
)"""  # noqa: S608 (constants only)


def expiry_params(broadcast_ids: Sequence[str], now: datetime) -> dict[str, Any]:
    """The parameters of `EXPIRE_PAST_EXPIRY`."""
    return {
        "ids": list(broadcast_ids),
        "now": now,
        "active": list(OPEN),
        "entry": msgspec.json.encode([history_entry("expired", now)]).decode(),
    }


async def active_expiries(conn: Conn, broadcast_ids: Sequence[str]) -> dict[str, datetime]:
    """`expiresAt` of each broadcast of `broadcast_ids` that is still active."""
    cur = await conn.execute(
        "SELECT broadcast_id, expires_at FROM broadcasts"
        " WHERE broadcast_id = ANY(%b::text[]) AND state = ANY(%b::text[])",
        (list(broadcast_ids), list(OPEN)),
        prepare=True,
    )
    return {row[0]: row[1] for row in await cur.fetchall()}


async def insert_broadcast(
    conn: Conn,
    created: BroadcastCreated,
    states: Sequence[str],
    notified: Sequence[str],
    *,
    version: int,
    end_reason: str | None = None,
) -> None:
    """Insert a new broadcast, its truck requests and its recipients; another active
    broadcast of the customer (a concurrent search) is a `ConcurrencyConflict`."""
    at = created.created_at
    history = msgspec.json.encode([history_entry(s, at) for s in states]).decode()
    with translated(f"customer-{created.customer_id}"):
        await conn.execute(
            "INSERT INTO broadcasts (broadcast_id, customer_id, state, end_reason, created_at,"
            " expires_at, state_changed_at, pickup, drop_location, note, notified_count,"
            " request_hash, history, version)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s::jsonb, %s, %s, %s, %s::jsonb, %s)",
            (
                created.broadcast_id,
                created.customer_id,
                states[-1],
                end_reason,
                at,
                created.expires_at,
                at,
                _location(created.pickup),
                _location(created.drop),
                created.note,
                len(notified),
                created.request_hash,
                history,
                version,
            ),
        )
    slots = created.truck_requests
    await conn.execute(
        "INSERT INTO truck_requests (truck_request_id, broadcast_id, slot, vehicle_type, state)"
        " SELECT id, %s, n, t, %s"
        " FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY AS x(id, t, n)",
        (
            created.broadcast_id,
            "expired" if end_reason else "open",
            [s.truck_request_id for s in slots],
            [s.vehicle_type for s in slots],
        ),
    )
    await conn.execute(
        "INSERT INTO broadcast_recipients (broadcast_id, transporter_id)"
        " SELECT %s, unnest(%s::text[])",
        (created.broadcast_id, list(notified)),
    )


async def change_state(
    conn: Conn,
    broadcast_id: str,
    state: str,
    *,
    at: datetime,
    version: int,
    end_reason: str | None = None,
) -> None:
    """Move a broadcast to `state`, recording the transition in its history."""
    entry = msgspec.json.encode([history_entry(state, at)]).decode()
    await conn.execute(
        "UPDATE broadcasts SET state = %s, end_reason = coalesce(%s, end_reason),"
        " state_changed_at = %s, history = history || %s::jsonb, version = %s"
        " WHERE broadcast_id = %s",
        (state, end_reason, at, entry, version, broadcast_id),
        prepare=True,
    )


async def set_version(conn: Conn, broadcast_id: str, version: int) -> None:
    await conn.execute(
        "UPDATE broadcasts SET version = %s WHERE broadcast_id = %s",
        (version, broadcast_id),
        prepare=True,
    )


async def close_truck_requests(
    conn: Conn, broadcast_id: str, states: Sequence[str], to: str
) -> None:
    await conn.execute(
        "UPDATE truck_requests SET state = %s WHERE broadcast_id = %s AND state = ANY(%s)",
        (to, broadcast_id, list(states)),
    )


async def accept_truck_requests(
    conn: Conn,
    broadcast_id: str,
    transporter_id: str,
    slots: Sequence[AcceptedSlot],
    *,
    at: datetime,
) -> None:
    """Mark `slots` accepted by `transporter_id` and create their assignments."""
    ids = [s.truck_request_id for s in slots]
    assignment_ids = [s.assignment_id for s in slots]
    await conn.execute(
        "UPDATE truck_requests t SET state = 'accepted', transporter_id = %s,"
        " assignment_id = x.a FROM unnest(%s::text[], %s::text[]) AS x(id, a)"
        " WHERE t.truck_request_id = x.id",
        (transporter_id, ids, assignment_ids),
        prepare=True,
    )
    await conn.execute(
        "INSERT INTO assignments (assignment_id, broadcast_id, truck_request_id, transporter_id,"
        " vehicle_type, state, created_at)"
        " SELECT a, %s, id, %s, t, 'accepted', %s"
        " FROM unnest(%s::text[], %s::text[], %s::text[]) AS x(a, id, t)",
        (broadcast_id, transporter_id, at, assignment_ids, ids, [s.vehicle_type for s in slots]),
        prepare=True,
    )
