"""Drivers and assignments (CONTRACT.md sections 3 and 6) read from seeded read-model rows."""

from __future__ import annotations

from typing import Any

import httpx
import psycopg

from libs.events.clock import iso_ms
from libs.runtime.tokens import ROLES, Role
from tests.gateway.conftest import Gateway, new_id
from tests.gateway.seed import DROP, PICKUP, Seeder, Slot

Conn = psycopg.AsyncConnection[Any]

ASSIGNMENT_FIELDS = {
    "assignmentId",
    "broadcastId",
    "truckRequestId",
    "transporterId",
    "vehicleType",
    "state",
    "driverId",
    "vehicleId",
    "pickup",
    "drop",
    "createdAt",
}


async def assigned(seed: Seeder) -> tuple[str, str, str, str, str]:
    """Customer C's broadcast with transporter T's assignment A carried by driver D."""
    customer, transporter = new_id("c"), new_id("t")
    driver = await seed.driver(transporter, online=True)
    slot = Slot(state="accepted", transporter_id=transporter, assignment_id=new_id("a"))
    broadcast_id = await seed.broadcast(
        customer, [slot], recipients=[transporter], state="fully_filled"
    )
    assignment = await seed.assignment(
        broadcast_id, slot, state="driver_assigned", driver_id=driver, vehicle_id="v-1"
    )
    return customer, transporter, driver, broadcast_id, assignment


async def test_drivers_list_shows_active_assignment(
    api: httpx.AsyncClient, system: Gateway, seed: Seeder
) -> None:
    """GET transporters/me/drivers lists the transporter's drivers with activeAssignmentId."""
    _customer, transporter, driver, _b, assignment = await assigned(seed)
    idle = await seed.driver(transporter, name="Asha")
    await seed.driver(new_id("t"))
    response = await api.get(
        "/v1/transporters/me/drivers", headers=system.auth("transporter", transporter)
    )
    assert response.status_code == 200
    drivers = {d["driverId"]: d for d in response.json()["drivers"]}
    assert set(drivers) == {driver, idle}
    assert drivers[driver] == {
        "driverId": driver,
        "name": "Ravi",
        "online": True,
        "lastSeenAt": iso_ms(seed.seen_at[driver]),
        "activeAssignmentId": assignment,
    }
    assert drivers[idle]["activeAssignmentId"] is None
    assert drivers[idle]["online"] is False and drivers[idle]["lastSeenAt"] is None


async def test_assignment_visible_to_transporter_driver_and_customer(
    api: httpx.AsyncClient, system: Gateway, seed: Seeder
) -> None:
    """GET assignments/{id} answers its transporter, its driver and the broadcast's customer."""
    customer, transporter, driver, broadcast_id, assignment = await assigned(seed)
    url = f"/v1/assignments/{assignment}"
    holders: list[tuple[Role, str]] = [
        ("transporter", transporter),
        ("driver", driver),
        ("customer", customer),
    ]
    for role, sub in holders:
        response = await api.get(url, headers=system.auth(role, sub))
        assert response.status_code == 200, (role, response.text)
        body = response.json()
        assert set(body) == ASSIGNMENT_FIELDS
        assert body["broadcastId"] == broadcast_id and body["state"] == "driver_assigned"
        assert body["driverId"] == driver and body["vehicleId"] == "v-1"
        assert body["pickup"] == PICKUP and body["drop"] == DROP
        assert body["createdAt"] == "2026-11-24T10:00:05.123Z"


async def test_assignment_hidden_from_others(
    api: httpx.AsyncClient, system: Gateway, seed: Seeder
) -> None:
    """Any other transporter, driver or customer gets 404 for an assignment."""
    *_, assignment = await assigned(seed)
    for role in ROLES:
        response = await api.get(f"/v1/assignments/{assignment}", headers=system.auth(role))
        assert response.status_code == 404


async def test_transporter_assignments_lists_active_ones(
    api: httpx.AsyncClient, system: Gateway, seed: Seeder
) -> None:
    """GET transporters/me/assignments lists the transporter's assignments not cancelled."""
    _c, transporter, _d, _b, assignment = await assigned(seed)
    slot = Slot(state="cancelled", transporter_id=transporter, assignment_id=new_id("a"))
    ended = await seed.broadcast(
        new_id("c"), [slot], state="cancelled", end_reason="cancelled_by_customer"
    )
    await seed.assignment(ended, slot, state="cancelled")
    response = await api.get(
        "/v1/transporters/me/assignments", headers=system.auth("transporter", transporter)
    )
    assert response.status_code == 200
    assert [a["assignmentId"] for a in response.json()["assignments"]] == [assignment]


async def test_driver_sees_current_assignment_or_404(
    api: httpx.AsyncClient, system: Gateway, seed: Seeder
) -> None:
    """GET drivers/me/assignment is the driver's active assignment; without one it is 404."""
    _c, transporter, driver, _b, assignment = await assigned(seed)
    response = await api.get("/v1/drivers/me/assignment", headers=system.auth("driver", driver))
    assert response.status_code == 200
    assert response.json()["assignmentId"] == assignment
    idle = await seed.driver(transporter)
    response = await api.get("/v1/drivers/me/assignment", headers=system.auth("driver", idle))
    assert response.status_code == 404
