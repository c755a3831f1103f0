"""Drivers going online and offline reach their transporter's socket on the other gateway; an
open driver socket is a heartbeat; a silent driver turns offline after the TTL."""

from __future__ import annotations

import time
from datetime import datetime

import httpx
import pytest

from tests.realtime import actions as act
from tests.realtime import expect as e
from tests.realtime.conftest import System, new_id
from tests.realtime.sockets import brief

TTL_S = 2.0


@pytest.fixture(scope="module")
def settings() -> dict[str, str]:
    return {"BROADCAST_TIMEOUT_SECONDS": "60", "PRESENCE_TTL_SECONDS": str(TTL_S)}


def moment(at: str) -> datetime:
    return datetime.fromisoformat(at.replace("Z", "+00:00"))


async def online_in_list(api: httpx.AsyncClient, system: System, transporter: str) -> bool:
    url = f"{system.url()}/v1/transporters/me/drivers"
    drivers = (await api.get(url, headers=system.auth("transporter", transporter))).json()
    return bool(drivers["drivers"][0]["online"])


async def test_availability_reaches_other_gateway_within_2s(
    api: httpx.AsyncClient, system: System
) -> None:
    """Each online/offline toggle on one gateway reaches the transporter's socket on the other
    gateway within 2 s, as driver_status_changed with the reply's `at`."""
    transporter = new_id("t")
    driver_id = await act.driver(api, system, transporter)
    driver_socket = await system.connect("driver", driver_id, 1)  # keeps it online
    watcher = await system.connect("transporter", transporter, 1)
    for n, online in enumerate((True, False, True, False), start=1):
        started = time.monotonic()
        reply = await act.availability(api, system, driver_id, online, gateway=0)
        frame = (await watcher.count(n, timeout=2.0))[-1]
        assert time.monotonic() - started < 2.0
        assert brief([frame]) == [e.driver_status(driver_id, online, reply["at"])]
        assert frame["at"] == reply["at"]
    await watcher.quiet(4)
    for client in (watcher, driver_socket):
        await client.close()


async def test_silent_driver_turns_offline_after_ttl(
    api: httpx.AsyncClient, system: System
) -> None:
    """An online driver with neither heartbeats nor a socket turns offline once the TTL has
    passed, and its transporter is told."""
    transporter = new_id("t")
    driver_id = await act.driver(api, system, transporter)
    watcher = await system.connect("transporter", transporter, 0)
    reply = await act.availability(api, system, driver_id, True, gateway=1)
    frames = await watcher.count(2, timeout=TTL_S + 5)
    assert brief(frames) == [
        e.driver_status(driver_id, True, reply["at"]),
        e.driver_status(driver_id, False, frames[1]["at"]),
    ]
    silent = (moment(frames[1]["at"]) - moment(reply["at"])).total_seconds()
    assert TTL_S <= silent < TTL_S + 2
    assert not await online_in_list(api, system, transporter)
    await watcher.quiet(2)
    await watcher.close()


async def test_open_driver_socket_is_a_heartbeat(api: httpx.AsyncClient, system: System) -> None:
    """A driver whose socket stays open stays online for several TTLs; once the socket closes
    the driver turns offline after the TTL and the transporter is told."""
    transporter = new_id("t")
    driver_id = await act.driver(api, system, transporter)
    driver_socket = await system.connect("driver", driver_id, 0)
    watcher = await system.connect("transporter", transporter, 1)
    await act.availability(api, system, driver_id, True)
    await watcher.count(1)
    await watcher.quiet(1, seconds=3 * TTL_S)  # three TTLs without any other heartbeat
    assert await online_in_list(api, system, transporter)
    await driver_socket.close()
    closed_at = time.monotonic()
    frames = await watcher.count(2, timeout=TTL_S + 5)
    assert time.monotonic() - closed_at >= TTL_S - TTL_S / 3
    assert brief(frames[1:]) == [e.driver_status(driver_id, False, frames[1]["at"])]
    await watcher.close()
