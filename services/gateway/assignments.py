"""Assignment and driver handlers (CONTRACT.md section 6)."""

from __future__ import annotations

import time

from starlette.responses import Response

from libs.events.commands import AssignDriver, SetAvailability
from libs.readmodel import reads
from libs.readmodel.presence import record_heartbeat
from libs.readmodel.views import assignment_view
from services.gateway.bodies import AssignDriverBody, AvailabilityBody, decode
from services.gateway.errors import not_found
from services.gateway.fleet_views import AssignmentList
from services.gateway.http import Call, json_response, result_of


def _visible_to(row: reads.AssignmentRow, call: Call) -> bool:
    """Its transporter, its driver and the broadcast's customer may see an assignment."""
    holder = {
        "transporter": row.transporter_id,
        "driver": row.driver_id,
        "customer": row.customer_id,
    }
    return holder[call.principal.role] == call.principal.sub


async def get_assignment(call: Call) -> Response:
    assignment_id = call.path_id("assignment_id")
    async with call.connection() as conn:
        row = await reads.assignment(conn, assignment_id)
    if row is None or not _visible_to(row, call):
        raise not_found()
    return json_response(assignment_view(row))


async def transporter_assignments(call: Call) -> Response:
    async with call.connection() as conn:
        rows = await reads.active_assignments(conn, call.principal.sub)
    return json_response(AssignmentList(assignments=[assignment_view(r) for r in rows]))


async def assign_driver(call: Call) -> Response:
    assignment_id = call.path_id("assignment_id")
    body = decode(call.body, AssignDriverBody)
    command = AssignDriver(
        transporter_id=call.principal.sub,
        assignment_id=assignment_id,
        driver_id=body.driver_id,
        vehicle_id=body.vehicle_id,
    )
    await call.execute(command)
    row = await call.read(lambda conn: reads.assignment(conn, assignment_id))
    if row is None or row.transporter_id != call.principal.sub:
        raise not_found()
    return json_response(assignment_view(row))


async def driver_assignment(call: Call) -> Response:
    async with call.connection() as conn:
        row = await reads.driver_assignment(conn, call.principal.sub)
    if row is None:
        raise not_found("No active assignment")
    return json_response(assignment_view(row))


async def set_availability(call: Call) -> Response:
    """`PUT drivers/me/availability`: the presence service's reply is the contract's body."""
    body = decode(call.body, AvailabilityBody)
    reply = await call.execute(SetAvailability(driver_id=call.principal.sub, online=body.online))
    return json_response(result_of(reply))


async def heartbeat(call: Call) -> Response:
    """`POST drivers/me/heartbeat`: the presence service reads the sighting from Redis."""
    now_ms = int(time.time() * 1000)
    await record_heartbeat(call.deps.redis, call.deps.prefix, call.principal.sub, now_ms)
    return Response(status_code=204)
