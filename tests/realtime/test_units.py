"""The pure parts of real time: the broadcast fold and which messages each event sends whom."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

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
from libs.events.codec import decode_event, encode
from libs.inbox.inbox import Message
from services.fanout import messages
from services.fanout.fold import apply, fold, remembered
from services.fanout.state import BroadcastState, FoldError
from services.gateway.realtime.wire import wire_text

AT = datetime(2026, 11, 24, 10, 0, 0, 123456, tzinfo=UTC)
PLACE = Location(lat=12.97, lng=77.59, address="MG Road")
CREATED = BroadcastCreated(
    broadcast_id="b1",
    customer_id="c1",
    pickup=PLACE,
    drop=PLACE,
    truck_requests=(
        TruckSlot(truck_request_id="r1", vehicle_type="open"),
        TruckSlot(truck_request_id="r2", vehicle_type="open"),
        TruckSlot(truck_request_id="r3", vehicle_type="closed"),
    ),
    created_at=AT,
    expires_at=AT + timedelta(minutes=2),
)
STARTED = BroadcastStarted(broadcast_id="b1", notified_transporters=("t1", "t2"))


def accepted(transporter: str, *slots: tuple[str, str, str]) -> SlotsAccepted:
    won = tuple(
        AcceptedSlot(truck_request_id=r, assignment_id=a, vehicle_type=t) for r, a, t in slots
    )
    return SlotsAccepted(broadcast_id="b1", transporter_id=transporter, slots=won)


def envelopes(*events: DomainEvent) -> list[Envelope]:
    return [
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


def sent(*events: DomainEvent) -> list[tuple[str, str, dict[str, Any]]]:
    """(recipient, type, data) of every message the last of `events` sends."""
    history = envelopes(*events)
    before = fold(history[:-1])
    change = messages.Change(before, apply(before, history[-1]), history[-1])
    return [summary(m) for m in messages.for_change(change)]


def summary(message: Message) -> tuple[str, str, dict[str, Any]]:
    data = json.loads(msgspec.json.encode(message.frame))
    assert data["at"].endswith("Z")
    return message.user, data["type"], data["data"]


def test_fold_follows_a_broadcast() -> None:
    """The fold tracks state, open slots per type, filled count and each assignment's holder."""
    state = fold(
        envelopes(
            CREATED,
            STARTED,
            accepted("t1", ("r1", "a1", "open")),
            accepted("t2", ("r2", "a2", "open"), ("r3", "a3", "closed")),
            BroadcastFilled(broadcast_id="b1"),
            DriverAssigned(
                assignment_id="a1",
                broadcast_id="b1",
                transporter_id="t1",
                driver_id="d1",
                vehicle_id="v1",
            ),
        )
    )
    assert isinstance(state, BroadcastState)
    assert (state.state, state.end_reason, state.version) == ("fully_filled", "fully_filled", 6)
    assert (state.filled, state.total, state.open_by_type()) == (3, 3, {"open": 0, "closed": 0})
    assert state.assignment("a1").driver_id == "d1"
    assert state.assignment("a3").transporter_id == "t2"


def test_folded_broadcasts_share_the_notified_transporters_ids() -> None:
    """Two broadcasts decoded from the store's JSON that notified the same transporters hold the
    same string objects for their ids, not a copy each: the projector's cache of thousands of
    states costs one pointer per notified transporter, not its id's bytes."""
    ids = tuple(f"transporter-{n:06d}" for n in range(300))
    states = []
    for broadcast in ("b1", "b2"):
        created = msgspec.structs.replace(CREATED, broadcast_id=broadcast)
        started = BroadcastStarted(broadcast_id=broadcast, notified_transporters=ids)
        decoded = [decode_event(encode(event)) for event in (created, started)]
        states.append(fold(envelopes(*decoded)))
    first, second = (s.notified for s in states if s is not None)
    assert first == ids
    assert all(a is b for a, b in zip(first, second, strict=True))


def test_an_ended_broadcast_is_remembered_without_its_transporters_and_sends_the_same() -> None:
    """The projector's cache keeps an ended broadcast without its notified transporters (an open
    one with them), and every event after the end sends the same messages from that state as
    from the whole fold: a driver put on a won slot, then a cancel."""
    first = accepted("t1", ("r1", "a1", "open"))
    rest = accepted("t2", ("r2", "a2", "open"), ("r3", "a3", "closed"))
    assign = DriverAssigned(
        assignment_id="a1", broadcast_id="b1", transporter_id="t1", driver_id="d1", vehicle_id="v1"
    )
    cancel = BroadcastCancelled(
        broadcast_id="b1",
        customer_id="c1",
        cancelled_assignments=(
            CancelledAssignment(assignment_id="a1", transporter_id="t1", driver_id="d1"),
        ),
    )
    filled = BroadcastFilled(broadcast_id="b1")
    history = envelopes(CREATED, STARTED, first, rest, filled, assign, cancel)
    open_state = fold(history[:3])
    assert open_state is not None and remembered(open_state) == open_state
    for end in range(5, len(history)):
        before = fold(history[:end])
        assert before is not None and before.state == "fully_filled"
        slim = remembered(before)
        assert slim.notified == () and before.notified == ("t1", "t2")
        whole = messages.for_change(
            messages.Change(before, apply(before, history[end]), history[end])
        )
        cached = messages.for_change(messages.Change(slim, apply(slim, history[end]), history[end]))
        assert [summary(m) for m in cached] == [summary(m) for m in whole] != []


def test_fold_refuses_a_stream_without_its_creation() -> None:
    """An event of a broadcast whose creation is missing cannot be folded."""
    with pytest.raises(FoldError):
        fold(envelopes(STARTED))


def test_creation_and_start() -> None:
    """Created tells the customer; started tells the customer and offers it to each transporter."""
    state = {"broadcastId": "b1", "expiresAt": "2026-11-24T10:02:00.123Z", "filled": 0, "total": 3}
    assert sent(CREATED) == [
        (
            "customer:c1",
            "broadcast_state_changed",
            {**state, "state": "created", "previousState": None, "endReason": None},
        )
    ]
    offer = {
        "broadcastId": "b1",
        "pickup": {"lat": 12.97, "lng": 77.59, "address": "MG Road"},
        "drop": {"lat": 12.97, "lng": 77.59, "address": "MG Road"},
        "openByType": {"open": 2, "closed": 1},
        "expiresAt": "2026-11-24T10:02:00.123Z",
    }
    assert sent(CREATED, STARTED) == [
        (
            "customer:c1",
            "broadcast_state_changed",
            {**state, "state": "broadcasting", "previousState": "created", "endReason": None},
        ),
        ("transporter:t1", "new_broadcast", offer),
        ("transporter:t2", "new_broadcast", offer),
    ]


def test_accepts_and_fill() -> None:
    """Each won slot is a truck_accepted; the first moves the state; transporters see the open
    counts until the last slot, which only removes the broadcast."""
    first = accepted("t1", ("r1", "a1", "open"))
    got = sent(CREATED, STARTED, first)
    assert [(u, t) for u, t, _ in got] == [
        ("customer:c1", "truck_accepted"),
        ("customer:c1", "broadcast_state_changed"),
        ("transporter:t1", "broadcast_updated"),
        ("transporter:t2", "broadcast_updated"),
    ]
    assert got[0][2] == {
        "broadcastId": "b1",
        "truckRequestId": "r1",
        "assignmentId": "a1",
        "transporterId": "t1",
    }
    assert got[1][2]["state"] == "partially_filled" and got[1][2]["filled"] == 1
    assert got[2][2] == {"broadcastId": "b1", "openByType": {"open": 1, "closed": 1}}
    last = accepted("t2", ("r2", "a2", "open"), ("r3", "a3", "closed"))
    assert [t for _, t, _ in sent(CREATED, STARTED, first, last)] == ["truck_accepted"] * 2
    filled = sent(CREATED, STARTED, first, last, BroadcastFilled(broadcast_id="b1"))
    assert (
        filled[0][2]["state"] == "fully_filled"
        and filled[0][2]["previousState"] == "partially_filled"
    )
    assert filled[1:] == [
        ("transporter:t1", "broadcast_removed", {"broadcastId": "b1", "reason": "fully_filled"}),
        ("transporter:t2", "broadcast_removed", {"broadcastId": "b1", "reason": "fully_filled"}),
    ]


def test_cancel_tells_holders_and_drivers() -> None:
    """Cancelling an active broadcast removes it for every transporter; each assignment's
    transporter and driver are told; a filled one is not removed twice."""
    first = accepted("t1", ("r1", "a1", "open"))
    cancel = BroadcastCancelled(
        broadcast_id="b1",
        customer_id="c1",
        cancelled_assignments=(
            CancelledAssignment(assignment_id="a1", transporter_id="t1", driver_id="d1"),
        ),
    )
    got = sent(CREATED, STARTED, first, cancel)
    assert got[0][2]["state"] == "cancelled" and got[0][2]["endReason"] == "cancelled_by_customer"
    assert got[1:] == [
        ("transporter:t1", "broadcast_removed", {"broadcastId": "b1", "reason": "cancelled"}),
        ("transporter:t2", "broadcast_removed", {"broadcastId": "b1", "reason": "cancelled"}),
        (
            "transporter:t1",
            "assignment_cancelled",
            {"assignmentId": "a1", "broadcastId": "b1", "message": "Request cancelled"},
        ),
        (
            "driver:d1",
            "trip_cancelled",
            {"assignmentId": "a1", "broadcastId": "b1", "message": "Trip cancelled"},
        ),
    ]
    all_won = accepted("t2", ("r2", "a2", "open"), ("r3", "a3", "closed"))
    after_fill = sent(CREATED, STARTED, first, all_won, BroadcastFilled(broadcast_id="b1"), cancel)
    assert [t for _, t, _ in after_fill] == [
        "broadcast_state_changed",
        "assignment_cancelled",
        "trip_cancelled",
    ]


def test_expiry_messages() -> None:
    """An expiry says "No transporters found" when nothing was filled, else "Request expired"."""
    expired = BroadcastExpired(broadcast_id="b1", end_reason="timeout")
    nothing = sent(CREATED, STARTED, expired)
    assert nothing[1] == (
        "customer:c1",
        "broadcast_expired",
        {"broadcastId": "b1", "message": "No transporters found", "retry": True},
    )
    assert nothing[2] == (
        "transporter:t1",
        "broadcast_removed",
        {"broadcastId": "b1", "reason": "expired"},
    )
    some = sent(CREATED, STARTED, accepted("t1", ("r1", "a1", "open")), expired)
    assert some[0][2]["previousState"] == "partially_filled"
    assert some[1][2]["message"] == "Request expired"


def test_driver_replaced() -> None:
    """A new driver on an assignment: the customer is told, the driver who was on it loses the
    trip."""
    first = accepted("t1", ("r1", "a1", "open"))

    def assign(driver: str) -> DriverAssigned:
        return DriverAssigned(
            assignment_id="a1",
            broadcast_id="b1",
            transporter_id="t1",
            driver_id=driver,
            vehicle_id="v1",
        )

    assert sent(CREATED, STARTED, first, assign("d1")) == [
        (
            "customer:c1",
            "driver_assigned",
            {"broadcastId": "b1", "assignmentId": "a1", "driverId": "d1", "vehicleId": "v1"},
        )
    ]
    got = sent(CREATED, STARTED, first, assign("d1"), assign("d2"))
    assert [(u, t) for u, t, _ in got] == [
        ("customer:c1", "driver_assigned"),
        ("driver:d1", "trip_cancelled"),
    ]


def test_availability_message() -> None:
    """A driver's availability goes to its transporter with the event's time."""
    event = DriverAvailabilityChanged(driver_id="d1", transporter_id="t1", online=True)
    [message] = messages.for_availability(event, AT, "t1")
    data = {"driverId": "d1", "online": True, "at": "2026-11-24T10:00:00.123Z"}
    assert summary(message) == ("transporter:t1", "driver_status_changed", data)


def test_wire_text_adds_the_event_id() -> None:
    """A stored frame goes out with its inbox id as eventId."""
    stored = b'{"type":"x","at":"2026-11-24T10:00:00.123Z","data":{}}'
    assert json.loads(wire_text("17-0", stored)) == {
        "eventId": "17-0",
        "type": "x",
        "at": "2026-11-24T10:00:00.123Z",
        "data": {},
    }
