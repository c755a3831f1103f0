"""Resuming with `?lastEventId=`: missed messages once each, in order, then live ones; a
`resync_required` when the id is older than the inbox; nothing lost to a killed gateway."""

from __future__ import annotations

import signal

import httpx
import psycopg
import pytest
from redis.asyncio import Redis

from libs.events.catalogue import DriverAvailabilityChanged
from libs.events.store import append
from libs.inbox.inbox import Inbox
from tests.realtime import actions as act
from tests.realtime import expect as e
from tests.realtime.conftest import System, new_id
from tests.realtime.sockets import Socket, brief


@pytest.fixture(scope="module")
def settings() -> dict[str, str]:
    """Broadcasts outlive these stories: a killed fan-out that held the projector's lease is
    replaced only once its lease runs out (a few seconds), which a 6 s broadcast may not."""
    return {"BROADCAST_TIMEOUT_SECONDS": "60", "PRESENCE_TTL_SECONDS": "30"}


async def flood(database_url: str, transporter: str, count: int, padding: int = 0) -> None:
    """`count` availability changes of one new driver of `transporter`, in one transaction
    (`padding` makes the driver's id, and so each message, that much longer)."""
    driver_id = new_id("d") + "x" * padding
    events = [
        DriverAvailabilityChanged(
            driver_id=driver_id, transporter_id=transporter, online=i % 2 == 0
        )
        for i in range(count)
    ]
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        await append(conn, f"driver-{driver_id}", 0, events)


async def test_reconnect_replays_missed_messages(api: httpx.AsyncClient, system: System) -> None:
    """A client that disconnects, misses messages and reconnects with lastEventId gets each
    missed message once, in order, then live ones."""
    transporter = new_id("t")
    driver_id = await act.driver(api, system, transporter)
    witness = await system.connect("transporter", transporter, 1)
    client = await system.connect("transporter", transporter, 0)
    for online in (True, False):
        await act.availability(api, system, driver_id, online)
    await client.count(2)
    resume_after = client.last_id
    await client.close()
    for online in (True, False, True):
        await act.availability(api, system, driver_id, online)
    await witness.count(5)

    again = await system.connect("transporter", transporter, 1, lastEventId=resume_after)
    assert await again.count(3) == witness.frames[2:5]
    await act.availability(api, system, driver_id, False)
    assert (await again.count(4))[3] == (await witness.count(6))[5]
    await again.quiet(4)
    assert [f["data"]["online"] for f in again.frames] == [True, False, True, False]
    for socket in (witness, again):
        await socket.close()


async def test_up_to_date_client_gets_only_live_messages(
    api: httpx.AsyncClient, system: System
) -> None:
    """Reconnecting with the newest eventId replays nothing; a socket without lastEventId starts
    from the time it connects."""
    transporter = new_id("t")
    driver_id = await act.driver(api, system, transporter)
    first = await system.connect("transporter", transporter, 0)
    await act.availability(api, system, driver_id, True)
    await first.count(1)
    fresh = await system.connect("transporter", transporter, 1)
    resumed = await system.connect("transporter", transporter, 1, lastEventId=first.last_id)
    await act.availability(api, system, driver_id, False)
    for socket in (fresh, resumed):
        assert await socket.count(1) == [(await first.count(2))[1]]
        await socket.quiet(1)
    for socket in (first, fresh, resumed):
        await socket.close()


async def test_resync_required_when_too_old(
    api: httpx.AsyncClient, system: System, database_url: str
) -> None:
    """A lastEventId older than what the inbox keeps (over 1000 newer messages), or no such
    id, gets {"type": "resync_required"} first, then live messages."""
    transporter = new_id("t")
    driver_id = await act.driver(api, system, transporter)
    witness = await system.connect("transporter", transporter, 0)
    await act.availability(api, system, driver_id, True)
    oldest = (await witness.count(1))[0]["eventId"]
    await flood(database_url, transporter, 1200)
    await witness.count(1201, timeout=30)
    for last in (oldest, "garbage"):
        late = await system.connect("transporter", transporter, 1, lastEventId=last)
        assert await late.count(1) == [{"type": "resync_required"}]
        await act.availability(api, system, driver_id, last == "garbage")
        got = await late.count(2)
        assert got[1]["type"] == "driver_status_changed"
        await late.quiet(2)
        await late.close()
    # The most recent 1000 messages are still there to resume from.
    recent = await system.connect(
        "transporter", transporter, 1, lastEventId=witness.frames[-1001]["eventId"]
    )
    assert (await recent.count(1000, timeout=20)) == witness.frames[-1000:]
    for socket in (witness, recent):
        await socket.close()


# Ids no message of the user ever had: newer than the newest (the last one is the largest id
# Redis allows), or malformed.
NEVER_SEEN = ("99999999999999-0", "18446744073709551615-18446744073709551615", "12-ab")


async def test_resync_required_when_ahead_of_the_inbox(
    api: httpx.AsyncClient, system: System
) -> None:
    """A lastEventId newer than the newest message, the largest id Redis allows, or a malformed
    one gets {"type": "resync_required"} first, then the live messages that follow."""
    transporter = new_id("t")
    driver_id = await act.driver(api, system, transporter)
    witness = await system.connect("transporter", transporter, 0)
    await act.availability(api, system, driver_id, True)
    await witness.count(1)  # the inbox is not empty: replay would start from the id given
    for n, last in enumerate(NEVER_SEEN):
        ahead = await system.connect("transporter", transporter, 1, lastEventId=last)
        assert await ahead.count(1) == [{"type": "resync_required"}], last
        await act.availability(api, system, driver_id, n % 2 == 1)
        live = (await witness.count(n + 2))[n + 1]
        assert live["type"] == "driver_status_changed"
        assert await ahead.count(2) == [{"type": "resync_required"}, live], last
        await ahead.quiet(2)
        await ahead.close()
    await witness.close()


async def test_resync_required_when_redis_lost_the_entry_resumed_from(
    api: httpx.AsyncClient, system: System, redis_url: str
) -> None:
    """Redis lost a user's newest inbox entries (a replica promoted before it caught up) and
    newer ones came after: a lastEventId of a lost entry lies between the oldest and the
    newest, yet a replay after it would miss the other lost entry, so it gets
    {"type": "resync_required"} first, then live messages."""
    transporter = new_id("t")
    driver_id = await act.driver(api, system, transporter)
    witness = await system.connect("transporter", transporter, 0)
    for online in (True, False, True, False):
        await act.availability(api, system, driver_id, online)
    frames = await witness.count(4)
    client = Redis.from_url(redis_url)
    inbox = Inbox(client, system.env["REDIS_KEY_PREFIX"])
    lost = [frames[1]["eventId"], frames[2]["eventId"]]
    await client.xdel(inbox.stream(f"transporter:{transporter}"), *lost)
    resumed = await system.connect("transporter", transporter, 1, lastEventId=lost[0])
    assert await resumed.count(1) == [{"type": "resync_required"}]
    await act.availability(api, system, driver_id, True)
    live = (await witness.count(5))[4]
    assert await resumed.count(2) == [{"type": "resync_required"}, live]
    await resumed.quiet(2)
    for socket in (witness, resumed):
        await socket.close()
    await client.aclose()


async def test_killed_gateways_lose_nothing(api: httpx.AsyncClient, system: System) -> None:
    """Each gateway killed (SIGKILL) in turn while a story goes on, and with the first the fan-out
    that projects: clients that resume with lastEventId on the restarted gateway get every
    message, once, in order."""
    kind, customer, transporter = act.vehicle_type(), new_id("c"), new_id("t")
    await act.vehicle(api, system, transporter, kind)
    customer_socket = await system.connect("customer", customer, 0)
    transporter_socket = await system.connect("transporter", transporter, 1)
    broadcast = await act.search(api, system, customer, kind, quantity=2)
    bid = broadcast["broadcastId"]
    await transporter_socket.count(1)

    system.gateways[1].stop(signal.SIGKILL)
    projecting = await system.projecting()
    system.fanouts[projecting].stop(signal.SIGKILL)
    accepted = await act.accept(api, system, transporter, bid, kind)
    await customer_socket.count(4)
    system.restart_gateway(1)
    system.restart_fanout(projecting)
    transporter_sockets = [transporter_socket, await _resume(system, transporter_socket, 1)]
    await transporter_sockets[1].count(1)

    system.gateways[0].stop(signal.SIGKILL)
    await act.cancel(api, system, customer, bid)
    await transporter_sockets[1].count(3)
    system.restart_gateway(0)
    customer_sockets = [customer_socket, await _resume(system, customer_socket, 0)]
    await customer_sockets[1].count(1)

    slot = accepted["assignments"][0]
    assert brief([f for s in customer_sockets for f in s.frames]) == [
        e.state_changed(broadcast, "created", None, 0),
        e.state_changed(broadcast, "broadcasting", "created", 0),
        e.truck_accepted(bid, slot, transporter),
        e.state_changed(broadcast, "partially_filled", "broadcasting", 1),
        e.state_changed(broadcast, "cancelled", "partially_filled", 1, "cancelled_by_customer"),
    ]
    assert brief([f for s in transporter_sockets for f in s.frames]) == [
        e.new_broadcast(broadcast, {kind: 2}),
        e.updated(bid, {kind: 1}),
        e.removed(bid, "cancelled"),
        e.assignment_cancelled(bid, slot["assignmentId"]),
    ]
    for socket in (customer_sockets[1], transporter_sockets[1]):
        await socket.quiet(len(socket.frames))
        await socket.close()


async def _resume(system: System, old: Socket, gateway: int) -> Socket:
    """The client's socket was dropped: it reconnects after the last message it got."""
    assert await old.closed() is not None
    return await system.connect(old.role, old.sub, gateway, lastEventId=old.last_id)
