"""The messages the event store says each user should have been sent (section 7, and the
choices docs/architecture.md lists), each with what identifies it in a frame, its event's time
and its place in the broadcast's order. `broadcast_updated` is left out: the projector may send
only the newest of several."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from chaos.fold import ACTIVE, Assignment, Broadcast, Folded, Step

Ident = tuple[str, ...]


@dataclass(frozen=True)
class Expected:
    user: str
    ident: Ident
    at: float
    broadcast: str | None
    version: int
    data: tuple[tuple[str, object], ...] = ()  # fields the frame's data must hold


def frame_ident(frame: dict[str, Any]) -> Ident | None:
    """What identifies a received frame; None for frames the checks do not follow."""
    kind, data = frame.get("type"), frame.get("data") or {}
    fields = IDENT_FIELDS.get(str(kind))
    if fields is None:
        return None
    return (str(kind), *(str(data.get(f)) for f in fields))


IDENT_FIELDS = {
    "broadcast_state_changed": ("broadcastId", "state"),
    "truck_accepted": ("broadcastId", "truckRequestId"),
    "driver_assigned": ("broadcastId", "assignmentId", "driverId"),
    "broadcast_expired": ("broadcastId",),
    "new_broadcast": ("broadcastId",),
    "broadcast_removed": ("broadcastId",),
    "assignment_cancelled": ("assignmentId",),
    "trip_assigned": ("assignmentId",),
    "trip_cancelled": ("assignmentId",),
    "driver_status_changed": ("driverId", "online", "at"),
}


def expected_messages(folded: Folded, transporter_of: Mapping[str, str]) -> list[Expected]:
    out: list[Expected] = []
    for b in folded.broadcasts.values():
        for step in b.steps:
            for user, ident in _of_step(b, step, folded.assignments):
                data = _state_fields(b, step) if ident[0] == "broadcast_state_changed" else ()
                out.append(Expected(user, ident, step.event.at, b.id, step.event.version, data))
    for driver, changes in folded.availability.items():
        transporter = transporter_of.get(driver)
        for e in changes:
            if transporter is not None:
                online = "True" if e.data["online"] else "False"
                ident = ("driver_status_changed", driver, online, e.at_iso)
                out.append(Expected(f"transporter:{transporter}", ident, e.at, None, e.version))
    return out


END_REASONS = {"fully_filled": "fully_filled", "cancelled": "cancelled_by_customer"}


def _state_fields(b: Broadcast, step: Step) -> tuple[tuple[str, object], ...]:
    """What a `broadcast_state_changed` says besides its state (section 7)."""
    if step.after == "expired":
        reason: object = step.event.data.get("endReason")
    else:
        reason = END_REASONS.get(step.after)
    return (
        ("previousState", step.before),
        ("endReason", reason),
        ("filled", step.filled),
        ("total", len(b.slots)),
    )


def _of_step(
    b: Broadcast, step: Step, assignments: Mapping[str, Assignment]
) -> list[tuple[str, Ident]]:
    """The messages of one event, in the order a client should see them (messages.py)."""
    e, customer = step.event, f"customer:{b.customer}"
    if e.type == "driver_assigned":
        return _driver_assigned(b, step, assignments)
    out: list[tuple[str, Ident]] = []
    if e.type == "slots_accepted":
        out += [
            (customer, ("truck_accepted", b.id, str(s["truckRequestId"]))) for s in e.data["slots"]
        ]
    if step.after != step.before:
        out.append((customer, ("broadcast_state_changed", b.id, step.after)))
    if e.type == "broadcast_expired":
        out.append((customer, ("broadcast_expired", b.id)))
    return (
        out
        + _to_transporters(b, step)
        + _cancelled(e.data if e.type == "broadcast_cancelled" else {})
    )


def _to_transporters(b: Broadcast, step: Step) -> list[tuple[str, Ident]]:
    kind = step.event.type
    if kind == "broadcast_started":
        return [(f"transporter:{t}", ("new_broadcast", b.id)) for t in b.notified]
    removed = kind in ("broadcast_filled", "broadcast_expired") or (
        kind == "broadcast_cancelled" and step.before in ACTIVE
    )  # a filled broadcast already left their lists
    return (
        [(f"transporter:{t}", ("broadcast_removed", b.id)) for t in b.notified] if removed else []
    )


def _cancelled(data: Mapping[str, Any]) -> list[tuple[str, Ident]]:
    out: list[tuple[str, Ident]] = []
    for c in data.get("cancelledAssignments") or []:
        aid = str(c["assignmentId"])
        out.append((f"transporter:{c['transporterId']}", ("assignment_cancelled", aid)))
        if c.get("driverId"):
            out.append((f"driver:{c['driverId']}", ("trip_cancelled", aid)))
    return out


def _driver_assigned(
    b: Broadcast, step: Step, assignments: Mapping[str, Assignment]
) -> list[tuple[str, Ident]]:
    e = step.event
    aid, driver = str(e.data["assignmentId"]), str(e.data["driverId"])
    out: list[tuple[str, Ident]] = [
        (f"customer:{b.customer}", ("driver_assigned", b.id, aid, driver))
    ]
    a = assignments.get(aid)
    earlier = [d for d, _, ev in a.drivers if ev.position < e.position] if a else []
    if earlier and earlier[-1] != driver:
        out.append((f"driver:{earlier[-1]}", ("trip_cancelled", aid)))
    out.append((f"driver:{driver}", ("trip_assigned", aid)))
    return out
