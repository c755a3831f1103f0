"""The frames of `GET /v1/ws` as the socket carries them, for the AsyncAPI document.

The fan-out's frames (`libs/readmodel/frames.py`) reach the socket with their `eventId` spliced
in (`realtime/wire.py`); the gateway adds its own (`pong`, `resync_required`) and reads one
(`ping`). Each gets a struct here only to be described: `schemas` turns them into JSON Schemas
with `msgspec.json.schema_components`, and every example is the bytes the gateway would send,
made by the same encoder and `wire_text` as a real frame.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

import msgspec

from libs.events.catalogue import Location
from libs.readmodel import frames as f
from libs.readmodel.views import AssignmentView, LocationView
from services.gateway.realtime.wire import PONG, RESYNC_REQUIRED, wire_text

REF_TEMPLATE = "#/components/schemas/{name}"
EXAMPLE_ID = "1764676800123-0"
EXAMPLE_AT = "2026-12-02T12:00:00.123Z"

EVENT_ID_PATTERN = "^[0-9]+-[0-9]+$"
EventId = Annotated[
    str,
    msgspec.Meta(
        pattern=EVENT_ID_PATTERN,
        description="the message's id in the user's inbox: reconnect with `?lastEventId=` it",
    ),
]
At = Annotated[str, msgspec.Meta(description="when it happened: UTC, ISO 8601 with milliseconds")]


class Ping(msgspec.Struct, frozen=True):
    """Sent by the client, at any time: the gateway answers `pong`."""

    type: Literal["ping"]


class Pong(msgspec.Struct, frozen=True):
    """The answer to the connection's `ping`."""

    type: Literal["pong"]


class ResyncRequired(msgspec.Struct, frozen=True):
    """Messages may be missing: reload the state over HTTP; live frames follow."""

    type: Literal["resync_required"]


CONTROL: dict[str, tuple[type[msgspec.Struct], str]] = {
    "ping": (Ping, '{"type":"ping"}'),
    "pong": (Pong, PONG),
    "resync_required": (ResyncRequired, RESYNC_REQUIRED),
}


def wire_struct(frame_type: f.FrameType) -> type[msgspec.Struct]:
    """`{"type", "eventId", "at", "data"}` of one frame type, as a struct to describe it."""
    name = "".join(part.title() for part in frame_type.kind.split("_")) + "Frame"
    kind: Any = Literal[frame_type.kind]  # one type's own constant
    return msgspec.defstruct(
        name,
        [("type", kind), ("event_id", EventId), ("at", At), ("data", frame_type.data)],
        kw_only=True,
        frozen=True,
        rename="camel",
    )


WIRE: dict[str, type[msgspec.Struct]] = {t.kind: wire_struct(t) for t in f.FRAME_TYPES}
KINDS: dict[str, f.FrameKind] = {t.kind: t.kind for t in f.FRAME_TYPES}

B, T, R = (
    "5b0c3f4e-2a61-4d8e-9c1f-0e7a6b2d9f10",
    "transporter-17",
    "9e41d2c7-6f0a-4b3e-8d25-1c7f3a9b0e64",
)
A, D, V = "c2f8a1d4-7e39-4b60-a5c2-8d1e6f3b7a90", "driver-42", "vehicle-KA01AB1234"
PICKUP = Location(lat=12.9716, lng=77.5946, address="MG Road, Bengaluru")
DROP = Location(lat=13.0358, lng=77.597, address="Hebbal, Bengaluru")
EXPIRES = "2026-12-02T12:02:00.000Z"

EXAMPLES: dict[f.FrameKind, f.Payload] = {
    "broadcast_state_changed": f.StateChanged(
        broadcast_id=B,
        state="partially_filled",
        previous_state="broadcasting",
        end_reason=None,
        expires_at=EXPIRES,
        filled=1,
        total=2,
    ),
    "truck_accepted": f.TruckAccepted(
        broadcast_id=B, truck_request_id=R, assignment_id=A, transporter_id=T
    ),
    "driver_assigned": f.DriverOnTruck(broadcast_id=B, assignment_id=A, driver_id=D, vehicle_id=V),
    "broadcast_expired": f.SearchExpired(broadcast_id=B, message=f.NO_TRANSPORTERS),
    "new_broadcast": f.NewBroadcast(
        broadcast_id=B,
        pickup=PICKUP,
        drop=DROP,
        open_by_type={"open_17ft": 2},
        expires_at=EXPIRES,
    ),
    "broadcast_updated": f.BroadcastUpdated(broadcast_id=B, open_by_type={"open_17ft": 1}),
    "broadcast_removed": f.BroadcastRemoved(broadcast_id=B, reason="fully_filled"),
    "assignment_cancelled": f.AssignmentCancelled(assignment_id=A, broadcast_id=B),
    "driver_status_changed": f.DriverStatus(driver_id=D, online=True, at=EXAMPLE_AT),
    "trip_assigned": AssignmentView(
        assignment_id=A,
        broadcast_id=B,
        truck_request_id=R,
        transporter_id=T,
        vehicle_type="open_17ft",
        state="driver_assigned",
        driver_id=D,
        vehicle_id=V,
        pickup=LocationView(lat=PICKUP.lat, lng=PICKUP.lng, address=PICKUP.address),
        drop=LocationView(lat=DROP.lat, lng=DROP.lng, address=DROP.address),
        created_at="2026-12-02T12:00:10.456Z",
    ),
    "trip_cancelled": f.TripCancelled(assignment_id=A, broadcast_id=B),
}

_encoder = msgspec.json.Encoder()


def example(kind: str) -> dict[str, Any]:
    """The frame `kind` as the gateway sends it (a fan-out frame, or one of its own)."""
    if kind in CONTROL:
        text = CONTROL[kind][1]
    else:
        frame_kind = KINDS[kind]
        stored = _encoder.encode(f.Frame(frame_kind, EXAMPLE_AT, EXAMPLES[frame_kind]))
        text = wire_text(EXAMPLE_ID, stored)
    parsed: dict[str, Any] = json.loads(text)
    return parsed


def schemas() -> tuple[dict[str, str], dict[str, Any]]:
    """Each frame type's schema name, and every schema (the frames' and what they hold)."""
    structs = {**WIRE, **{k: s for k, (s, _) in CONTROL.items()}}  # every frame, by type
    _, components = msgspec.json.schema_components(structs.values(), ref_template=REF_TEMPLATE)
    for schema in components.values():
        _every_field_required(schema)
    return {k: s.__name__ for k, s in structs.items()}, components


def _every_field_required(schema: dict[str, Any]) -> None:
    """msgspec lists a field with a default as optional; these structs encode every field
    (none sets `omit_defaults`), so each one is always there."""
    if "properties" in schema:
        schema["required"] = list(schema["properties"])
