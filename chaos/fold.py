"""The event store folded into what the checks ask about: each broadcast's slots, winners,
assignments and state after every event; each driver's availability over time."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from chaos.store import Event

ACTIVE = ("broadcasting", "partially_filled")
NEXT_STATES: dict[str | None, tuple[str, ...]] = {
    None: ("created",),
    "created": ("broadcasting",),
    "broadcasting": ("partially_filled", "fully_filled", "expired", "cancelled"),
    "partially_filled": ("fully_filled", "expired", "cancelled"),
    "fully_filled": ("cancelled",),
    "expired": (),
    "cancelled": (),
}
STATE_OF = {
    "broadcast_created": "created",
    "broadcast_started": "broadcasting",
    "broadcast_filled": "fully_filled",
    "broadcast_cancelled": "cancelled",
    "broadcast_expired": "expired",
}


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


@dataclass(frozen=True)
class Step:
    """One event of a broadcast and the state before and after it."""

    event: Event
    before: str | None
    after: str
    filled: int


@dataclass
class Assignment:
    id: str
    broadcast: str
    truck_request: str
    transporter: str
    won: Event
    drivers: list[tuple[str, str, Event]] = field(default_factory=list)  # driver, vehicle
    cancelled: Event | None = None

    @property
    def driver(self) -> str | None:
        return self.drivers[-1][0] if self.drivers else None


@dataclass
class Broadcast:
    id: str
    customer: str
    created: Event
    expires_at: float
    slots: dict[str, str]  # truck request id: vehicle type
    notified: tuple[str, ...] = ()
    steps: list[Step] = field(default_factory=list)
    wins: dict[str, list[Event]] = field(default_factory=dict)  # truck request id: claims

    @property
    def state(self) -> str:
        return self.steps[-1].after


@dataclass
class Folded:
    broadcasts: dict[str, Broadcast] = field(default_factory=dict)
    assignments: dict[str, Assignment] = field(default_factory=dict)
    availability: dict[str, list[Event]] = field(default_factory=dict)  # driver: changes
    slot_owner: dict[str, str] = field(default_factory=dict)  # truck request: broadcast
    strays: list[Event] = field(default_factory=list)  # events of a broadcast never created


def fold(events: list[Event]) -> Folded:
    out = Folded()
    for event in events:
        if event.type == "driver_availability_changed":
            out.availability.setdefault(str(event.data["driverId"]), []).append(event)
        elif event.category == "broadcast":
            _apply(out, event)
    return out


def _apply(out: Folded, event: Event) -> None:
    if event.type == "broadcast_created":
        _created(out, event)
    found = out.broadcasts.get(str(event.data.get("broadcastId")))
    if found is None:
        out.strays.append(event)
        return
    if event.type == "broadcast_started":
        found.notified = tuple(str(t) for t in event.data["notifiedTransporters"])
    elif event.type == "slots_accepted":
        _accepted(out, found, event)
    elif event.type == "driver_assigned":
        _driver_assigned(out, event)
    elif event.type == "broadcast_cancelled":
        _cancelled(out, event)
    _step(found, event)


def _cancelled(out: Folded, event: Event) -> None:
    for c in event.data.get("cancelledAssignments") or []:
        if (a := out.assignments.get(str(c["assignmentId"]))) is not None:
            a.cancelled = event


def _created(out: Folded, event: Event) -> None:
    data = event.data
    slots = {str(s["truckRequestId"]): str(s["vehicleType"]) for s in data["truckRequests"]}
    b = Broadcast(
        str(data["broadcastId"]), str(data["customerId"]), event, epoch(data["expiresAt"]), slots
    )
    out.broadcasts[b.id] = b
    out.slot_owner.update(dict.fromkeys(slots, b.id))


def _driver_assigned(out: Folded, event: Event) -> None:
    a = out.assignments.get(str(event.data["assignmentId"]))
    if a is not None:
        a.drivers.append((str(event.data["driverId"]), str(event.data["vehicleId"]), event))


def _accepted(out: Folded, b: Broadcast, event: Event) -> None:
    for s in event.data["slots"]:
        trid, aid = str(s["truckRequestId"]), str(s["assignmentId"])
        b.wins.setdefault(trid, []).append(event)
        transporter = str(event.data["transporterId"])
        out.assignments[aid] = Assignment(aid, b.id, trid, transporter, event)


def _step(b: Broadcast, event: Event) -> None:
    before = b.steps[-1].after if b.steps else None
    filled = b.steps[-1].filled if b.steps else 0
    after = STATE_OF.get(event.type, before or "created")
    if event.type == "slots_accepted":
        filled += len(event.data["slots"])
        if before == "broadcasting" and filled < len(b.slots):
            after = "partially_filled"
    b.steps.append(Step(event, before, after, filled))
