"""What the projector knows of a broadcast at one of its events (folded by `fold.py`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from libs.events.catalogue import Location


class FoldError(ValueError):
    """The events do not make a broadcast (no `broadcast_created` first, unknown assignment)."""


@dataclass(frozen=True)
class Slot:
    truck_request_id: str
    vehicle_type: str
    state: str = "open"
    assignment_id: str | None = None


@dataclass(frozen=True)
class Assignment:
    assignment_id: str
    truck_request_id: str
    transporter_id: str
    vehicle_type: str
    state: str = "accepted"
    driver_id: str | None = None
    vehicle_id: str | None = None


@dataclass(frozen=True)
class BroadcastState:
    broadcast_id: str
    customer_id: str
    pickup: Location
    drop: Location
    expires_at: datetime
    version: int
    state: str = "created"
    end_reason: str | None = None
    notified: tuple[str, ...] = ()
    slots: tuple[Slot, ...] = ()
    assignments: tuple[Assignment, ...] = ()

    @property
    def total(self) -> int:
        return len(self.slots)

    @property
    def filled(self) -> int:
        """Slots won by a transporter (also after the broadcast was cancelled)."""
        return sum(1 for s in self.slots if s.assignment_id is not None)

    def open_by_type(self) -> dict[str, int]:
        """Open slots per requested vehicle type; a type with none open shows 0."""
        counts = dict.fromkeys((s.vehicle_type for s in self.slots), 0)
        for s in self.slots:
            counts[s.vehicle_type] += s.state == "open"
        return counts

    def assignment(self, assignment_id: str) -> Assignment:
        for a in self.assignments:
            if a.assignment_id == assignment_id:
                return a
        raise FoldError(f"assignment {assignment_id} is not on broadcast {self.broadcast_id}")
