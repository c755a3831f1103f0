"""Rows written straight into the read models, as the broadcast and acceptance services write
them, so the gateway's reads can be tested on their own. `Seeder.remove` deletes them again so
no other test (a timer rebuilding its schedule, say) ever meets rows without events."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import psycopg

from tests.gateway.conftest import new_id

Conn = psycopg.AsyncConnection[Any]

CREATED = datetime(2026, 11, 24, 10, 0, 0, 123456, tzinfo=UTC)
PICKUP = {"lat": 12.97, "lng": 77.59, "address": "MG Road"}
DROP = {"lat": 13.03, "lng": 77.62, "address": "Hebbal"}
HISTORY = [
    {"state": "created", "at": "2026-11-24T10:00:00.123Z"},
    {"state": "broadcasting", "at": "2026-11-24T10:00:00.150Z"},
]

_BROADCAST = """INSERT INTO broadcasts (broadcast_id, customer_id, state, end_reason, created_at,
    expires_at, state_changed_at, pickup, drop_location, note, notified_count, request_hash,
    history, version)
    VALUES (%s, %s, %s, %s, %s, now() + interval '1 hour', %s, %s::jsonb, %s::jsonb, NULL, %s,
    'seeded', %s::jsonb, 2)"""
_SLOT = """INSERT INTO truck_requests (truck_request_id, broadcast_id, slot, vehicle_type, state,
    transporter_id, assignment_id) VALUES (%s, %s, %s, %s, %s, %s, %s)"""
_ASSIGNMENT = """INSERT INTO assignments (assignment_id, broadcast_id, truck_request_id,
    transporter_id, vehicle_type, state, driver_id, vehicle_id, created_at)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"""
_DRIVER = """INSERT INTO drivers (driver_id, transporter_id, name, phone, online, last_seen_at,
    version) VALUES (%s, %s, %s, '+919800000000', %s, %s, 1)"""


def _json(value: object) -> str:
    return msgspec.json.encode(value).decode()


@dataclass
class Slot:
    vehicle_type: str = "open_17ft"
    state: str = "open"
    transporter_id: str | None = None
    assignment_id: str | None = None
    truck_request_id: str = field(default_factory=lambda: new_id("tr"))


@dataclass
class Seeder:
    conn: Conn
    broadcasts: list[str] = field(default_factory=list)
    drivers: list[str] = field(default_factory=list)
    seen_at: dict[str, datetime] = field(default_factory=dict)  # online drivers' last sighting

    async def broadcast(
        self,
        customer_id: str,
        slots: Sequence[Slot],
        *,
        recipients: Sequence[str] = (),
        state: str = "broadcasting",
        end_reason: str | None = None,
    ) -> str:
        """A broadcast with `slots` (in order) notified to `recipients`; its id."""
        broadcast_id = new_id("b")
        self.broadcasts.append(broadcast_id)
        changed = CREATED + timedelta(milliseconds=27)
        await self.conn.execute(
            _BROADCAST,
            (
                *(broadcast_id, customer_id, state, end_reason, CREATED, changed),
                *(_json(PICKUP), _json(DROP), len(recipients), _json(HISTORY)),
            ),
        )
        for position, s in enumerate(slots):
            await self.conn.execute(
                _SLOT,
                (
                    *(s.truck_request_id, broadcast_id, position, s.vehicle_type, s.state),
                    *(s.transporter_id, s.assignment_id),
                ),
            )
        for transporter in recipients:
            await self.conn.execute(
                "INSERT INTO broadcast_recipients (broadcast_id, transporter_id) VALUES (%s, %s)",
                (broadcast_id, transporter),
            )
        return broadcast_id

    async def assignment(
        self,
        broadcast_id: str,
        slot: Slot,
        *,
        state: str = "accepted",
        driver_id: str | None = None,
        vehicle_id: str | None = None,
    ) -> str:
        """An assignment of `slot` (seeded with its transporter and assignment id)."""
        assert slot.assignment_id and slot.transporter_id
        created = CREATED + timedelta(seconds=5)
        await self.conn.execute(
            _ASSIGNMENT,
            (
                *(slot.assignment_id, broadcast_id, slot.truck_request_id, slot.transporter_id),
                *(slot.vehicle_type, state, driver_id, vehicle_id, created),
            ),
        )
        return slot.assignment_id

    async def driver(self, transporter_id: str, *, online: bool = False, name: str = "Ravi") -> str:
        driver_id = new_id("d")
        self.drivers.append(driver_id)
        seen = None
        if online:  # seen just now: the presence sweep (if running) leaves it online for a TTL
            now = datetime.now(UTC)
            seen = self.seen_at[driver_id] = now.replace(microsecond=now.microsecond // 1000 * 1000)
        await self.conn.execute(_DRIVER, (driver_id, transporter_id, name, online, seen))
        return driver_id

    async def remove(self) -> None:
        """Delete every row this seeder wrote."""
        for table in ("assignments", "broadcast_recipients", "truck_requests", "broadcasts"):
            await self.conn.execute(
                f"DELETE FROM {table} WHERE broadcast_id = ANY(%s)",
                (self.broadcasts,),
            )
        await self.conn.execute("DELETE FROM drivers WHERE driver_id = ANY(%s)", (self.drivers,))
