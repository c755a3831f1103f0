"""Accept handlers (CONTRACT.md section 5): a transporter claims slots of a broadcast."""

from __future__ import annotations

from starlette.responses import Response

from libs.events.commands import AcceptSlots
from libs.readmodel import reads
from services.gateway.bodies import AcceptBody, EmptyBody, decode
from services.gateway.errors import not_found
from services.gateway.http import Call, json_response, result_of


async def _accept(call: Call, command: AcceptSlots) -> Response:
    return json_response(result_of(await call.execute(command)))


async def accept_truck_request(call: Call) -> Response:
    truck_request_id = call.path_id("truck_request_id")
    decode(call.body, EmptyBody, empty_ok=True)
    command = AcceptSlots(
        transporter_id=call.principal.sub,
        broadcast_id=await _broadcast_of(call, truck_request_id),
        truck_request_id=truck_request_id,
    )
    return await _accept(call, command)


async def _broadcast_of(call: Call, truck_request_id: str) -> str:
    """The truck request's broadcast, from memory when known; 404 when there is none."""
    index = call.deps.truck_requests
    if (known := index.get(truck_request_id)) is not None:
        return known
    async with call.connection() as conn:
        found = await reads.broadcast_of_truck_request(conn, truck_request_id)
    if found is None:
        raise not_found()
    index.remember(truck_request_id, found)
    return found


async def accept_broadcast(call: Call) -> Response:
    broadcast_id = call.path_id("broadcast_id")
    body = decode(call.body, AcceptBody)
    command = AcceptSlots(
        transporter_id=call.principal.sub,
        broadcast_id=broadcast_id,
        vehicle_type=body.vehicle_type,
        quantity=body.quantity,
    )
    return await _accept(call, command)
