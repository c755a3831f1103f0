"""The atomic claim of truck requests (CONTRACT.md section 5).

The claim locks the broadcast's row, so claims, cancels and expiry of one broadcast queue and
each decides on what the previous one committed: every slot is won exactly once, and a cancel
that commits first turns every later claim into `request_cancelled`. The events are appended
with the version read under the lock; the store's unique (stream, version) backs that up.

Claims of one broadcast read in one batch are decided in one transaction (`accept_many`), each
exactly as if it ran alone after the ones before it; a single claim is a batch of one.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from libs.events.catalogue import AcceptedSlot, BroadcastFilled, DomainEvent, SlotsAccepted
from libs.events.clock import Clock
from libs.events.commands import AcceptResult, AcceptSlots, AssignmentRef, Rejected
from libs.events.store import append
from libs.readmodel.broadcasts import (
    LOCK_BROADCAST,
    LockedBroadcast,
    accept_truck_requests,
    broadcast_row,
    change_state,
    set_version,
    timed_out,
)
from services.acceptance.deps import AcceptanceDeps

Conn = psycopg.AsyncConnection[Any]

# Runs after the broadcast's row is locked, so it sees every claim committed before ours: sent in
# one round trip with the lock, but the server starts it (and takes its snapshot) only once the
# lock is held.
_RECIPIENTS_AND_OPEN_SLOTS = """
SELECT coalesce((SELECT array_agg(transporter_id) FROM broadcast_recipients
                 WHERE broadcast_id = %(b)s AND transporter_id = ANY(%(t)s)), '{}'),
       coalesce((SELECT array_agg(ARRAY[truck_request_id, vehicle_type] ORDER BY slot)
                 FROM truck_requests WHERE broadcast_id = %(b)s AND state = 'open'), '{}')
"""

Slot = tuple[str, str]  # (truck request id, vehicle type)


@dataclass(frozen=True)
class Claim:
    """A claim that wins: its slots, and how many slots the broadcast has open after it."""

    cmd: AcceptSlots
    won: list[AcceptedSlot]
    left: int


async def _lock_and_read(
    conn: Conn, broadcast_id: str, transporters: list[str]
) -> tuple[LockedBroadcast | None, set[str], list[Slot]]:
    """Lock the broadcast's row; then which of `transporters` were notified, and every open
    slot in slot order. One round trip."""
    async with conn.pipeline():
        locked = await conn.execute(LOCK_BROADCAST, (broadcast_id,), prepare=True)
        read = await conn.execute(
            _RECIPIENTS_AND_OPEN_SLOTS, {"b": broadcast_id, "t": transporters}, prepare=True
        )
    row = broadcast_row(broadcast_id, await locked.fetchone())
    found = await read.fetchone()
    assert found is not None
    return row, set(found[0]), [(pair[0], pair[1]) for pair in found[1]]


def refuse_unless_open(row: LockedBroadcast | None, clock: Clock) -> LockedBroadcast:
    if row is None:
        raise Rejected("not_found", "Broadcast not found")
    if row.state == "cancelled":
        raise Rejected("request_cancelled")
    if timed_out(row, clock()):
        raise Rejected("request_expired")
    return row


def choose(cmd: AcceptSlots, open_slots: list[Slot]) -> list[Slot]:
    """The slots to win, all or none: `no_longer_available` says how many of the type are left.

    A single-slot claim names its truck request (and, for that count, its vehicle type).
    """
    of_type = [s for s in open_slots if s[1] == cmd.vehicle_type]
    if cmd.truck_request_id is not None:
        wanted = [s for s in open_slots if s[0] == cmd.truck_request_id]
    else:
        wanted = of_type
    if len(wanted) < cmd.quantity:
        raise Rejected("no_longer_available", available=len(of_type))
    return wanted[: cmd.quantity]


async def accept_slots(deps: AcceptanceDeps, conn: Conn, cmd: AcceptSlots) -> AcceptResult:
    """Claim the slots `cmd` asks for, all or none, or refuse with the contract's reason."""
    outcome = (await accept_many(deps, conn, [cmd]))[0]
    if isinstance(outcome, Rejected):
        raise outcome
    return outcome


async def accept_many(
    deps: AcceptanceDeps, conn: Conn, cmds: list[AcceptSlots]
) -> list[AcceptResult | Rejected]:
    """Claims of one broadcast decided in one transaction, each exactly as if it ran alone
    after the ones before it: its result, or its refusal (which changes nothing)."""
    broadcast_id = cmds[0].broadcast_id
    assert all(c.broadcast_id == broadcast_id for c in cmds), "one broadcast per batch"
    row, notified, open_slots = await _lock_and_read(
        conn, broadcast_id, sorted({c.transporter_id for c in cmds})
    )
    outcomes: list[Claim | Rejected] = []
    for cmd in cmds:
        try:
            refuse_unless_open(row, deps.clock)
            if cmd.transporter_id not in notified:
                raise Rejected("not_notified")
            chosen = choose(cmd, open_slots)
        except Rejected as refused:
            outcomes.append(refused)
            continue
        open_slots = [s for s in open_slots if s not in chosen]
        won = [
            AcceptedSlot(truck_request_id=t, assignment_id=str(uuid.uuid4()), vehicle_type=v)
            for t, v in chosen
        ]
        outcomes.append(Claim(cmd, won, left=len(open_slots)))
    claims = [o for o in outcomes if isinstance(o, Claim)]
    if claims:
        assert row is not None
        await _record(conn, row, claims, now=deps.clock())
    return [o if isinstance(o, Rejected) else _result(broadcast_id, o) for o in outcomes]


def _result(broadcast_id: str, claim: Claim) -> AcceptResult:
    refs = tuple(
        AssignmentRef(
            assignment_id=s.assignment_id,
            truck_request_id=s.truck_request_id,
            vehicle_type=s.vehicle_type,
        )
        for s in claim.won
    )
    state = "partially_filled" if claim.left else "fully_filled"
    return AcceptResult(broadcast_id=broadcast_id, broadcast_state=state, assignments=refs)


async def _record(conn: Conn, row: LockedBroadcast, claims: list[Claim], *, now: datetime) -> None:
    """Append the claims' events and update the read models, all sent in one round trip."""
    broadcast_id, state, written = row.broadcast_id, row.state, row.version
    events: list[DomainEvent] = []
    async with conn.pipeline():
        for claim in claims:
            events.append(
                SlotsAccepted(
                    broadcast_id=broadcast_id,
                    transporter_id=claim.cmd.transporter_id,
                    slots=tuple(claim.won),
                )
            )
            if not claim.left:
                events.append(BroadcastFilled(broadcast_id=broadcast_id))
            await accept_truck_requests(
                conn, broadcast_id, claim.cmd.transporter_id, claim.won, at=now
            )
            after = "partially_filled" if claim.left else "fully_filled"
            if after != state:
                end_reason = None if claim.left else "fully_filled"
                state, written = after, row.version + len(events)
                await change_state(
                    conn, broadcast_id, after, at=now, version=written, end_reason=end_reason
                )
        if written != row.version + len(events):  # the last claims changed no state
            await set_version(conn, broadcast_id, row.version + len(events))
        await append(conn, f"broadcast-{broadcast_id}", row.version, events)
