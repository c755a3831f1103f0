"""The WebSocket reference: `/asyncapi.json` is a valid AsyncAPI 3.0 document of every frame of
CONTRACT.md section 7, describes the frames the fan-out and the gateway really send, is what the
gateway serves, and `docs/websocket.md` is its rendering."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, get_args

import httpx
import jsonschema
import msgspec
import pytest

from libs.events.catalogue import (
    AcceptedSlot,
    BroadcastCancelled,
    BroadcastCreated,
    BroadcastExpired,
    BroadcastFilled,
    BroadcastStarted,
    CancelledAssignment,
    DomainEvent,
    DriverAssigned,
    DriverAvailabilityChanged,
    Envelope,
    Location,
    SlotsAccepted,
    TruckSlot,
)
from libs.inbox.inbox import Message
from libs.readmodel.frames import FRAME_TYPES, Frame, FrameKind
from libs.readmodel.views import AssignmentView, LocationView
from services.fanout import messages
from services.fanout.fold import apply, fold
from services.gateway.asyncapi import document
from services.gateway.asyncapi_markdown import render
from services.gateway.realtime.connection import LAGGING_CLOSE, REPLACED_CLOSE, TRY_AGAIN_CLOSE
from services.gateway.realtime.endpoint import _is_ping
from services.gateway.realtime.wire import wire_text
from tests.gateway.conftest import Gateway
from tests.realtime.sockets import Socket

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = Path(__file__).parent / "schemas" / "asyncapi" / "3.0.0.json"
SCHEMA_SHA256 = "d4571a420e6ffb7fcc7066c95a6db1202f299a3c51daa103d0706bf30f95e626"
CONTRACT = ROOT.parent / "shared" / "CONTRACT.md"

# CONTRACT.md section 7's table: type, to, the data fields it names (None: "the assignment with
# pickup and drop"). `test_this_list_is_the_contracts` checks it against the contract itself.
CONTRACT_FRAMES: dict[str, tuple[str, set[str] | None]] = {
    "broadcast_state_changed": (
        "customer",
        {"broadcastId", "state", "previousState", "endReason", "expiresAt", "filled", "total"},
    ),
    "truck_accepted": (
        "customer",
        {"broadcastId", "truckRequestId", "assignmentId", "transporterId"},
    ),
    "driver_assigned": ("customer", {"broadcastId", "assignmentId", "driverId", "vehicleId"}),
    "broadcast_expired": ("customer", {"broadcastId", "message", "retry"}),
    "new_broadcast": (
        "each notified transporter",
        {"broadcastId", "pickup", "drop", "openByType", "expiresAt"},
    ),
    "broadcast_updated": ("notified transporters", {"broadcastId", "openByType"}),
    "broadcast_removed": ("notified transporters", {"broadcastId", "reason"}),
    "assignment_cancelled": (
        "transporter holding an assignment",
        {"assignmentId", "broadcastId", "message"},
    ),
    "driver_status_changed": ("the driver's transporter", {"driverId", "online", "at"}),
    "trip_assigned": ("driver", None),
    "trip_cancelled": ("driver", {"assignmentId", "broadcastId", "message"}),
}


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return document()


def payload_validator(doc: dict[str, Any], kind: str) -> jsonschema.Draft7Validator:
    """A validator of message `kind`'s payload, its `$ref`s resolved within the document."""
    payload = doc["components"]["messages"][kind]["payload"]
    return jsonschema.Draft7Validator({"allOf": [payload], "components": doc["components"]})


def test_vendored_schema_is_the_published_one() -> None:
    """The AsyncAPI 3.0.0 schema file is byte for byte the one its README names."""
    assert hashlib.sha256(SCHEMA.read_bytes()).hexdigest() == SCHEMA_SHA256


def test_document_validates_as_asyncapi_3(doc: dict[str, Any]) -> None:
    """The document is valid against the official AsyncAPI 3.0.0 JSON Schema."""
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]
    assert errors == []


def test_the_validator_refuses_a_broken_document(doc: dict[str, Any]) -> None:
    """The same validation fails for an AsyncAPI 2 style operation and a channel without an
    address of text (so a pass above means something)."""
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    broken = copy.deepcopy(doc)
    broken["operations"]["receivePing"]["action"] = "publish"
    assert not validator.is_valid(broken)
    broken = copy.deepcopy(doc)
    broken["channels"]["socket"]["address"] = 7
    assert not validator.is_valid(broken)


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for value in node.values() for r in refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in refs(value)]
    return []


def test_every_reference_resolves(doc: dict[str, Any]) -> None:
    """Every `$ref` in the document points at something the document holds."""
    found = refs(doc)
    assert len(found) > 40
    for ref in found:
        node: Any = doc
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
        assert isinstance(node, dict), ref


def test_every_contract_frame_is_there_with_its_recipients_and_data(doc: dict[str, Any]) -> None:
    """Each frame type of contract section 7 is a message of the socket channel, sent by the
    gateway, to the recipients the contract names, with the data fields it names."""
    channel = doc["channels"]["socket"]
    schemas = doc["components"]["schemas"]
    assert channel["address"] == "/v1/ws"
    for kind, (to, fields) in CONTRACT_FRAMES.items():
        message = doc["components"]["messages"][kind]
        assert kind in channel["messages"], kind
        assert message["x-to"] == to, kind
        frame = schemas[message["payload"]["$ref"].rsplit("/", 1)[-1]]
        assert set(frame["required"]) == {"type", "eventId", "at", "data"}, kind
        assert frame["properties"]["type"] == {"enum": [kind]}
        data = schemas[frame["properties"]["data"]["$ref"].rsplit("/", 1)[-1]]
        expected = fields if fields is not None else set(AssignmentView.__struct_encode_fields__)
        assert set(data["properties"]) == expected, kind
        assert set(data["required"]) == expected, kind  # every field is always sent
    trip = schemas["AssignmentView"]["properties"]
    assert {"pickup", "drop"} <= set(trip)


def test_ping_pong_resync_and_close_codes_are_described(doc: dict[str, Any]) -> None:
    """`ping` is received and answered by `pong`, `resync_required` is sent to every role, and
    the channel lists the close codes the gateway and uvicorn use."""
    ops = doc["operations"]
    assert ops["receivePing"]["action"] == "receive"
    assert ops["receivePing"]["messages"] == [{"$ref": "#/channels/socket/messages/ping"}]
    assert ops["receivePing"]["reply"]["messages"] == [{"$ref": "#/channels/socket/messages/pong"}]
    assert ops["sendResyncRequired"]["messages"] == [
        {"$ref": "#/channels/socket/messages/resync_required"}
    ]
    tags = {t["name"] for t in doc["components"]["messages"]["resync_required"]["tags"]}
    assert tags == {"customer", "transporter", "driver"}
    codes = {c["code"] for c in doc["channels"]["socket"]["x-close-codes"]}
    assert codes == {1008, 1009, 1011, 1012, TRY_AGAIN_CLOSE, LAGGING_CLOSE, REPLACED_CLOSE}
    query = doc["channels"]["socket"]["bindings"]["ws"]["query"]["properties"]
    assert set(query) == {"token", "lastEventId"}


def test_every_example_is_valid_and_the_ping_example_is_a_ping(doc: dict[str, Any]) -> None:
    """Each message's example validates against its own payload schema and against no other
    message's, and the gateway's own ping check accepts the ping example."""
    kinds = list(doc["components"]["messages"])
    for kind in kinds:
        example = doc["components"]["messages"][kind]["examples"][0]["payload"]
        for other in kinds:
            valid = payload_validator(doc, other).is_valid(example)
            assert valid == (other == kind), (kind, other)
    assert _is_ping(json.dumps(doc["components"]["messages"]["ping"]["examples"][0]["payload"]))


def test_frame_kinds_are_the_catalogue() -> None:
    """The `type`s a `Frame` may carry (checked by mypy in the fan-out) are exactly the table's."""
    assert list(get_args(FrameKind)) == [t.kind for t in FRAME_TYPES]


AT = datetime(2026, 12, 2, 12, 0, 0, 123000, tzinfo=UTC)
PLACE = Location(lat=12.97, lng=77.59, address="MG Road")
CREATED = BroadcastCreated(
    broadcast_id="b1",
    customer_id="c1",
    pickup=PLACE,
    drop=Location(lat=13.03, lng=77.62),
    truck_requests=(
        TruckSlot(truck_request_id="r1", vehicle_type="open"),
        TruckSlot(truck_request_id="r2", vehicle_type="open"),
    ),
    created_at=AT,
    expires_at=AT + timedelta(minutes=2),
)
STARTED = BroadcastStarted(broadcast_id="b1", notified_transporters=("t1", "t2"))
FIRST = SlotsAccepted(
    broadcast_id="b1",
    transporter_id="t1",
    slots=(AcceptedSlot(truck_request_id="r1", assignment_id="a1", vehicle_type="open"),),
)
SECOND = SlotsAccepted(
    broadcast_id="b1",
    transporter_id="t2",
    slots=(AcceptedSlot(truck_request_id="r2", assignment_id="a2", vehicle_type="open"),),
)
ASSIGNED = DriverAssigned(
    assignment_id="a1", broadcast_id="b1", transporter_id="t1", driver_id="d1", vehicle_id="v1"
)
CANCELLED = BroadcastCancelled(
    broadcast_id="b1",
    customer_id="c1",
    cancelled_assignments=(
        CancelledAssignment(assignment_id="a1", transporter_id="t1", driver_id="d1"),
    ),
)
TRIP = AssignmentView(
    assignment_id="a1",
    broadcast_id="b1",
    truck_request_id="r1",
    transporter_id="t1",
    vehicle_type="open",
    state="driver_assigned",
    driver_id="d1",
    vehicle_id="v1",
    pickup=LocationView(lat=12.97, lng=77.59, address="MG Road"),
    drop=LocationView(lat=13.03, lng=77.62),
    created_at="2026-12-02T12:00:03.000Z",
)


def story(*events: DomainEvent) -> list[Message[Frame]]:
    """Every message the fan-out sends for each of `events` in turn."""
    history = [
        Envelope(
            event_id=f"e{v}",
            stream_id="broadcast-b1",
            version=v,
            position=v,
            recorded_at=AT + timedelta(seconds=v),
            event=event,
        )
        for v, event in enumerate(events, start=1)
    ]
    sent: list[Message[Frame]] = []
    for n, envelope in enumerate(history):
        before = fold(history[:n]) if n else None
        trip = TRIP if isinstance(envelope.event, DriverAssigned) else None
        sent += messages.for_change(
            messages.Change(before, apply(before, envelope), envelope, trip)
        )
    return sent


def test_the_frames_the_fanout_sends_match_the_document(doc: dict[str, Any]) -> None:
    """Through a cancelled, a filled and an expired broadcast and a driver going online, every
    frame the fan-out writes, sent as the gateway sends it, validates against its message's
    schema and goes to a role the message names; every frame type is seen."""
    encoder = msgspec.json.Encoder()
    sent = [
        *story(CREATED, STARTED, FIRST, ASSIGNED, CANCELLED),
        *story(CREATED, STARTED, FIRST, SECOND, BroadcastFilled(broadcast_id="b1")),
        *story(CREATED, STARTED, BroadcastExpired(broadcast_id="b1", end_reason="timeout")),
        *messages.for_availability(
            DriverAvailabilityChanged(driver_id="d1", transporter_id="t1", online=True), AT, "t1"
        ),
    ]
    seen = set()
    for n, message in enumerate(sent, start=1):
        kind = message.frame.type
        frame = json.loads(wire_text(f"1764676800000-{n}", encoder.encode(message.frame)))
        errors = [e.message for e in payload_validator(doc, kind).iter_errors(frame)]
        assert errors == [], (kind, frame)
        role = message.user.split(":", 1)[0]
        tags = {t["name"] for t in doc["components"]["messages"][kind]["tags"]}
        assert tags == {role}, (kind, message.user)
        seen.add(kind)
    assert seen == set(CONTRACT_FRAMES)


def contract_table() -> dict[str, tuple[str, set[str]]]:
    """The frame table of CONTRACT.md section 7: type, to, the field names its data names."""
    text = CONTRACT.read_text()
    section = text[text.index("## 7. WebSocket") : text.index("## 8.")]
    rows = re.findall(r"^\| `(\w+)` \| ([^|]+) \| (.+) \|$", section, re.MULTILINE)
    table = {}
    for kind, to, data in rows:
        named = re.sub(r"\([^)]*\)", "", data)  # the values in parentheses name no field
        groups = re.findall(r"`([^`]+)`", named)
        names = {n.split(":")[0].strip() for g in groups for n in g.split(",")}
        table[kind] = (to.strip(), {n for n in names if re.fullmatch(r"[a-z][A-Za-z]*", n)})
    return table


@pytest.mark.skipif(not CONTRACT.exists(), reason=f"no contract at {CONTRACT}")
def test_this_list_is_the_contracts() -> None:
    """The test's frame list is CONTRACT.md section 7's table: the same types, recipients and
    data fields (the assignment's fields are not listed there)."""
    table = contract_table()
    assert list(table) == list(CONTRACT_FRAMES)
    for kind, (to, fields) in CONTRACT_FRAMES.items():
        assert table[kind] == (to, fields or set()), kind


def test_websocket_md_is_the_rendering(doc: dict[str, Any]) -> None:
    """docs/websocket.md is exactly the rendering of the document (regenerate it with
    `python -m services.gateway.asyncapi --markdown > docs/websocket.md`)."""
    assert (ROOT / "docs" / "websocket.md").read_text() == render(doc)


def test_websocket_md_shows_every_message(doc: dict[str, Any]) -> None:
    """The page has a section per message with who receives it and its example."""
    page = render(doc)
    for kind, message in doc["components"]["messages"].items():
        section = page.split(f"### `{kind}`\n", 1)[1].split("\n### ", 1)[0]
        assert message.get("x-to", message.get("x-sent-by")) in section, kind
        assert json.dumps(message["examples"][0]["payload"], indent=2) in section, kind


async def test_the_gateway_serves_the_generated_document(
    system: Gateway, doc: dict[str, Any]
) -> None:
    """`GET /asyncapi.json` on a running gateway, without a token, is the generated document."""
    async with httpx.AsyncClient(base_url=system.url, timeout=15.0) as client:
        response = await client.get("/asyncapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == doc


async def test_the_gateways_own_frames_match_the_served_document(system: Gateway) -> None:
    """On a real socket (token as `?token=`), an unknown `lastEventId` first gets
    `resync_required` and a ping gets `pong`: both validate against the served document."""
    async with httpx.AsyncClient(base_url=system.url, timeout=15.0) as client:
        served = (await client.get("/asyncapi.json")).json()
    token = system.token("driver")
    url = system.url.replace("http://", "ws://") + f"/v1/ws?token={token}&lastEventId=99-0"
    socket = await Socket.open(url)
    try:
        await socket.count(1)
        await socket.send({"type": "ping"})
        resync, pong = await socket.count(2)
    finally:
        await socket.close()
    assert (resync["type"], pong["type"]) == ("resync_required", "pong")
    assert payload_validator(served, "resync_required").is_valid(resync)
    assert payload_validator(served, "pong").is_valid(pong)
    assert not payload_validator(served, "pong").is_valid(resync)
