"""Whole stories over two gateway processes and every service as real processes: each user gets
exactly the messages of CONTRACT.md section 7, in order, on every connection, and nobody else's."""

from __future__ import annotations

import re
from typing import Any

import httpx

from tests.realtime import actions as act
from tests.realtime import expect as e
from tests.realtime.conftest import System, new_id, ok
from tests.realtime.sockets import Socket, brief

ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def well_formed(frames: list[dict[str, Any]]) -> None:
    """Every frame has exactly type, eventId, at (ISO ms) and data, eventIds increasing."""
    for frame in frames:
        assert set(frame) == {"type", "eventId", "at", "data"}, frame
        assert ISO_MS.match(frame["at"]), frame
    ids = [tuple(int(p) for p in f["eventId"].split("-")) for f in frames]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


async def test_search_accept_assign_cancel(api: httpx.AsyncClient, system: System) -> None:
    """A customer on one gateway and transporters on the other get exactly the contract's
    messages through search, two accepts, a driver assignment and a cancel; every connection
    of a user gets the same frames; bystanders get nothing."""
    kind, customer = act.vehicle_type(), new_id("c")
    t1, t2, t3 = new_id("t"), new_id("t"), new_id("t")
    v1 = await act.vehicle(api, system, t1, kind)
    for t in (t2, t3):
        await act.vehicle(api, system, t, kind)
    d1 = await act.driver(api, system, t1)
    sockets = {
        "customer": await system.connect("customer", customer, 0),
        "customer-again": await system.connect("customer", customer, 1),
        "t1": await system.connect("transporter", t1, 1),
        "t1-again": await system.connect("transporter", t1, 0),
        "t2": await system.connect("transporter", t2, 1),
        "t3": await system.connect("transporter", t3, 1),
        "d1": await system.connect("driver", d1, 0),
    }
    bystanders = [
        await system.connect("customer", new_id("c"), 1),
        await system.connect("transporter", customer, 0),  # same subject, other role
        await system.connect("driver", new_id("d"), 1),
    ]

    online = await act.availability(api, system, d1, True)
    await sockets["t1"].count(1)
    broadcast = await act.search(api, system, customer, kind, quantity=2)
    bid = broadcast["broadcastId"]
    await sockets["t3"].count(1)
    first = await act.accept(api, system, t1, bid, kind)
    await sockets["t3"].count(2)
    a1 = first["assignments"][0]["assignmentId"]
    open_slot = next(
        r["truckRequestId"]
        for r in broadcast["truckRequests"]
        if r["truckRequestId"] != first["assignments"][0]["truckRequestId"]
    )
    second = await act.accept_slot(api, system, t2, open_slot)
    a2 = second["assignments"][0]["assignmentId"]
    await sockets["t3"].count(3)
    await act.assign(api, system, t1, a1, d1, v1)
    trip_url = f"{system.url()}/v1/assignments/{a1}"
    trip = ok(await api.get(trip_url, headers=system.auth("driver", d1)))
    await sockets["d1"].count(1)
    await act.cancel(api, system, customer, bid)

    expected_customer = [
        e.state_changed(broadcast, "created", None, 0),
        e.state_changed(broadcast, "broadcasting", "created", 0),
        e.truck_accepted(bid, first["assignments"][0], t1),
        e.state_changed(broadcast, "partially_filled", "broadcasting", 1),
        e.truck_accepted(bid, second["assignments"][0], t2),
        e.state_changed(broadcast, "fully_filled", "partially_filled", 2, "fully_filled"),
        e.driver_assigned(bid, a1, d1, v1),
        e.state_changed(broadcast, "cancelled", "fully_filled", 2, "cancelled_by_customer"),
    ]
    offer = [
        e.new_broadcast(broadcast, {kind: 2}),
        e.updated(bid, {kind: 1}),
        e.removed(bid, "fully_filled"),
    ]
    status = e.driver_status(d1, True, online["at"])
    expected = {
        "customer": expected_customer,
        "customer-again": expected_customer,
        "t1": [status, *offer, e.assignment_cancelled(bid, a1)],
        "t1-again": [status, *offer, e.assignment_cancelled(bid, a1)],
        "t2": [*offer, e.assignment_cancelled(bid, a2)],
        "t3": offer,
        "d1": [("trip_assigned", trip), e.trip_cancelled(bid, a1)],
    }
    for name, frames in expected.items():
        got = await sockets[name].count(len(frames))
        assert brief(got) == frames, name
        well_formed(got)
    for name, socket in sockets.items():
        await socket.quiet(len(expected[name]))
    assert sockets["customer"].frames == sockets["customer-again"].frames
    assert sockets["t1"].frames == sockets["t1-again"].frames
    for socket in bystanders:
        await socket.quiet(0)
    for socket in [*sockets.values(), *bystanders]:
        await socket.close()


async def test_cancel_while_partially_filled(api: httpx.AsyncClient, system: System) -> None:
    """Cancelling an active broadcast removes it from every notified transporter's list, and
    the holder of an assignment without a driver is told its assignment was cancelled."""
    kind, customer, holder, other = act.vehicle_type(), new_id("c"), new_id("t"), new_id("t")
    for t in (holder, other):
        await act.vehicle(api, system, t, kind)
    customer_socket = await system.connect("customer", customer, 1)
    holder_socket = await system.connect("transporter", holder, 0)
    other_socket = await system.connect("transporter", other, 0)
    broadcast = await act.search(api, system, customer, kind, quantity=2)
    bid = broadcast["broadcastId"]
    accepted = await act.accept(api, system, holder, bid, kind)
    await other_socket.count(2)
    await act.cancel(api, system, customer, bid)

    a1 = accepted["assignments"][0]
    removed = e.removed(bid, "cancelled")
    got = await holder_socket.count(4)
    assert brief(got)[1:] == [
        e.updated(bid, {kind: 1}),
        removed,
        e.assignment_cancelled(bid, a1["assignmentId"]),
    ]
    assert brief(await other_socket.count(3))[2] == removed
    got = await customer_socket.count(5)
    assert brief(got)[2:] == [
        e.truck_accepted(bid, a1, holder),
        e.state_changed(broadcast, "partially_filled", "broadcasting", 1),
        e.state_changed(broadcast, "cancelled", "partially_filled", 1, "cancelled_by_customer"),
    ]
    for socket, n in ((customer_socket, 5), (holder_socket, 4), (other_socket, 3)):
        await socket.quiet(n)
        await socket.close()


async def test_search_that_expires(api: httpx.AsyncClient, system: System) -> None:
    """A search nobody fully takes expires: its customer learns it expired ("No transporters
    found" when nothing was filled, "Request expired" otherwise, retry true) and its
    transporters see it removed."""
    kind, transporter = act.vehicle_type(), new_id("t")
    await act.vehicle(api, system, transporter, kind)
    untaken, half = new_id("c"), new_id("c")
    sockets = {
        untaken: await system.connect("customer", untaken, 0),
        half: await system.connect("customer", half, 0),
        transporter: await system.connect("transporter", transporter, 1),
    }
    nobody = await act.search(api, system, untaken, kind)
    partly = await act.search(api, system, half, kind, quantity=2)
    await act.accept(api, system, transporter, partly["broadcastId"], kind)

    got = await sockets[untaken].count(4, timeout=20)
    assert brief(got)[2:] == [
        e.state_changed(nobody, "expired", "broadcasting", 0, "timeout"),
        e.search_expired(nobody["broadcastId"], "No transporters found"),
    ]
    got = await sockets[half].count(6, timeout=20)
    assert brief(got)[4:] == [
        e.state_changed(partly, "expired", "partially_filled", 1, "timeout"),
        e.search_expired(partly["broadcastId"], "Request expired"),
    ]
    got = await sockets[transporter].count(5, timeout=20)
    assert sorted(brief(got), key=str) == sorted(
        [
            e.new_broadcast(nobody, {kind: 1}),
            e.new_broadcast(partly, {kind: 2}),
            e.updated(partly["broadcastId"], {kind: 1}),
            e.removed(nobody["broadcastId"], "expired"),
            e.removed(partly["broadcastId"], "expired"),
        ],
        key=str,
    )
    for socket, n in zip(sockets.values(), (4, 6, 5), strict=True):
        await socket.quiet(n)
        await socket.close()


async def test_search_with_no_transporters(api: httpx.AsyncClient, system: System) -> None:
    """A search that reaches nobody ends at once: created, broadcasting, expired (reason
    no_transporters) and "No transporters found"."""
    customer = new_id("c")
    socket = await system.connect("customer", customer, 1)
    broadcast = await act.search(api, system, customer, act.vehicle_type())
    got = await socket.count(4)
    assert brief(got) == [
        e.state_changed(broadcast, "created", None, 0),
        e.state_changed(broadcast, "broadcasting", "created", 0),
        e.state_changed(broadcast, "expired", "broadcasting", 0, "no_transporters"),
        e.search_expired(broadcast["broadcastId"], "No transporters found"),
    ]
    await socket.quiet(4)
    await socket.close()


async def test_ping_pong(system: System) -> None:
    """A client's {"type": "ping"} is answered {"type": "pong"} on either gateway."""
    for gateway in (0, 1):
        socket = await system.connect("customer", new_id("c"), gateway)
        await socket.send({"type": "ping"})
        assert await socket.count(1) == [{"type": "pong"}]
        await socket.close()


async def test_one_user_many_sockets(system: System, api: httpx.AsyncClient) -> None:
    """Every open connection of a user, on any gateway, gets each of its messages."""
    transporter = new_id("t")
    driver_id = await act.driver(api, system, transporter)
    sockets: list[Socket] = [
        await system.connect("transporter", transporter, g) for g in (0, 0, 1, 1)
    ]
    await act.availability(api, system, driver_id, True)
    await act.availability(api, system, driver_id, False)
    frames = [await s.count(2) for s in sockets]
    assert all(f == frames[0] for f in frames)
    assert [f["data"]["online"] for f in frames[0]] == [True, False]
    for s in sockets:
        await s.close()
