"""Fleet registry handlers (CONTRACT.md section 3): a transporter's vehicles and drivers."""

from __future__ import annotations

from starlette.responses import Response

from libs.events.commands import RegisterDriver, RegisterVehicle, RemoveVehicle
from libs.readmodel import reads
from services.gateway.bodies import DriverBody, VehicleBody, decode
from services.gateway.errors import not_found
from services.gateway.fleet_views import VehicleView, driver_list, driver_view
from services.gateway.http import Call, json_response


async def put_vehicle(call: Call) -> Response:
    vehicle_id = call.path_id("vehicle_id")
    body = decode(call.body, VehicleBody)
    await call.execute(
        RegisterVehicle(
            transporter_id=call.principal.sub,
            vehicle_id=vehicle_id,
            vehicle_type=body.vehicle_type,
            lat=body.lat,
            lng=body.lng,
        )
    )
    view = VehicleView(
        vehicle_id=vehicle_id, vehicle_type=body.vehicle_type, lat=body.lat, lng=body.lng
    )
    return json_response(view)


async def delete_vehicle(call: Call) -> Response:
    vehicle_id = call.path_id("vehicle_id")
    await call.execute(RemoveVehicle(transporter_id=call.principal.sub, vehicle_id=vehicle_id))
    return Response(status_code=204)


async def put_driver(call: Call) -> Response:
    driver_id = call.path_id("driver_id")
    body = decode(call.body, DriverBody)
    command = RegisterDriver(
        transporter_id=call.principal.sub, driver_id=driver_id, name=body.name, phone=body.phone
    )
    await call.execute(command)
    row = await call.read(lambda conn: reads.driver(conn, driver_id))
    if row is None or row.transporter_id != call.principal.sub:
        raise not_found()
    return json_response(driver_view(row))


async def list_drivers(call: Call) -> Response:
    async with call.connection() as conn:
        rows = await reads.drivers_of(conn, call.principal.sub)
    return json_response(driver_list(rows))
