"""Accept refusals of CONTRACT.md section 5 on both accept routes, through the shared gateway:
404 for an unknown broadcast, 403 not_notified, 409 request_expired."""

from __future__ import annotations

import httpx

from tests.gateway.conftest import Gateway, new_id
from tests.gateway.helpers import create, error, register_vehicle, search, vehicle_type


async def test_accepting_an_unknown_broadcast_is_404(
    api: httpx.AsyncClient, system: Gateway
) -> None:
    """Accepting trucks of a broadcast that does not exist is 404 not_found."""
    response = await api.post(
        f"/v1/broadcasts/{new_id('b')}/accept",
        json={"vehicleType": "open_17ft", "quantity": 1},
        headers=system.auth("transporter"),
    )
    error(response, 404, "not_found")


async def test_accepting_a_slot_not_sent_to_you_is_403(
    api: httpx.AsyncClient, system: Gateway
) -> None:
    """A transporter that was not sent the broadcast gets 403 not_notified accepting a slot."""
    kind = vehicle_type()
    await register_vehicle(api, system, new_id("t"), kind)
    created = await create(api, system, new_id("c"), search(kind))
    slot = created["truckRequests"][0]["truckRequestId"]
    response = await api.post(
        f"/v1/truck-requests/{slot}/accept", headers=system.auth("transporter")
    )
    error(response, 403, "not_notified")


async def test_accepting_a_broadcast_that_found_nobody_is_409_expired(
    api: httpx.AsyncClient, system: Gateway
) -> None:
    """A broadcast that ended at once (no transporters) refuses accepts on both routes with 409
    request_expired."""
    kind = vehicle_type()
    created = await create(api, system, new_id("c"), search(kind))
    assert created["endReason"] == "no_transporters"
    headers = system.auth("transporter")
    slot = created["truckRequests"][0]["truckRequestId"]
    by_slot = await api.post(f"/v1/truck-requests/{slot}/accept", headers=headers)
    by_type = await api.post(
        f"/v1/broadcasts/{created['broadcastId']}/accept",
        json={"vehicleType": kind, "quantity": 1},
        headers=headers,
    )
    for response in (by_slot, by_type):
        assert error(response, 409, "request_expired")["message"] == "Request expired"
