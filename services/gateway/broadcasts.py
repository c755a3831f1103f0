"""Broadcast handlers (CONTRACT.md section 4): create, read, list, cancel."""

from __future__ import annotations

import hashlib

import msgspec
from starlette.responses import Response

from libs.events.catalogue import Location
from libs.events.commands import BroadcastRef, CancelBroadcast, CreateBroadcast, TruckOrder
from libs.readmodel import reads
from services.gateway.bodies import (
    CancelBody,
    CreateBroadcastBody,
    LocationBody,
    check_distinct_types,
    decode,
)
from services.gateway.errors import not_found
from services.gateway.http import Call, json_response, result_of
from services.gateway.idempotency import REPLAYED
from services.gateway.views import BroadcastList, broadcast_view, notified_view


def search_hash(body: CreateBroadcastBody) -> str:
    """The same search gives the same hash, whatever the key or truck order."""
    trucks = sorted(body.trucks, key=lambda t: t.vehicle_type)
    canonical = msgspec.json.encode([body.pickup, body.drop, trucks, body.note])
    return hashlib.sha256(canonical).hexdigest()


def _location(body: LocationBody) -> Location:
    return Location(lat=body.lat, lng=body.lng, address=body.address)


def create_command(customer_id: str, body: CreateBroadcastBody) -> CreateBroadcast:
    return CreateBroadcast(
        customer_id=customer_id,
        pickup=_location(body.pickup),
        drop=_location(body.drop),
        trucks=tuple(
            TruckOrder(vehicle_type=t.vehicle_type, quantity=t.quantity) for t in body.trucks
        ),
        note=body.note,
        request_hash=search_hash(body),
    )


async def _owned(call: Call, broadcast_id: str) -> reads.Broadcast:
    """The caller's (a customer's) broadcast; 404 when it is missing or someone else's."""
    found = await call.read(lambda conn: reads.broadcast(conn, broadcast_id))
    if found is None or found.row.customer_id != call.principal.sub:
        raise not_found()
    return found


async def create_broadcast(call: Call) -> Response:
    body = decode(call.body, CreateBroadcastBody)
    check_distinct_types(body)
    reply = await call.execute(create_command(call.principal.sub, body))
    ref = msgspec.json.decode(result_of(reply), type=BroadcastRef)
    view = broadcast_view(await _owned(call, ref.broadcast_id))
    if ref.replayed or reply.replayed:
        return json_response(view, 200, dict(REPLAYED))
    return json_response(view, 201)


async def get_broadcast(call: Call) -> Response:
    broadcast_id = call.path_id("broadcast_id")
    if call.principal.role == "customer":
        return json_response(broadcast_view(await _owned(call, broadcast_id)))
    transporter = call.principal.sub
    async with call.connection() as conn:
        found = await reads.broadcast(conn, broadcast_id)
        if found is None or not await reads.was_notified(conn, broadcast_id, transporter):
            raise not_found()
    return json_response(broadcast_view(found, viewer=transporter))


async def active_broadcast(call: Call) -> Response:
    async with call.connection() as conn:
        found = await reads.active_broadcast(conn, call.principal.sub)
    if found is None:
        raise not_found("No active broadcast")
    return json_response(broadcast_view(found))


async def notified_broadcasts(call: Call) -> Response:
    transporter = call.principal.sub
    async with call.connection() as conn:
        found = await reads.notified_active_broadcasts(conn, transporter)
    return json_response(BroadcastList(broadcasts=[notified_view(b, transporter) for b in found]))


async def cancel_broadcast(call: Call) -> Response:
    broadcast_id = call.path_id("broadcast_id")
    body = decode(call.body, CancelBody, empty_ok=True)
    await _owned(call, broadcast_id)
    command = CancelBroadcast(
        customer_id=call.principal.sub, broadcast_id=broadcast_id, reason=body.reason
    )
    await call.execute(command)
    return json_response(broadcast_view(await _owned(call, broadcast_id)))
