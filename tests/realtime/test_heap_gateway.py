"""The real gateway's heap (libs/runtime/heap.py): what its sockets leave behind once closed is
freed by reference counting alone, frozen or not, so the permanent generation returns to its size
before and a full collection finds no cyclic garbage: none needs to run by the clock. A full
collection is forced with SIGUSR1 and read from the gateway's /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from libs.events.catalogue import DriverAvailabilityChanged
from libs.events.store import append
from tests.realtime.conftest import System, new_id
from tests.realtime.sockets import Socket

USERS, PER_USER, FRAMES = 60, 2, 3
# Objects the cycle collector tracks per open socket (about 130 when measured); a socket's
# objects are seen frozen when the permanent generation has grown by at least this many each.
FROZEN_PER_SOCKET = 50
# Unreachable objects a full collection may find from the process's own work meanwhile (its
# heartbeats, logs, metrics scrapes): under one per socket opened. Before the protocol and send
# buffer fixes it found 12-74 per socket (2,776 and 1,705 here).
SLACK = USERS * PER_USER
# What the permanent generation may still hold per socket opened once all are closed, with no
# collection: measured 13 (3,100 after 240 sockets), none of it garbage (the full collection
# after it found 0, and the count fell back): the collector untracks dicts and tuples of atomic
# values only when it walks them, so some frozen ones are counted until a full collection.
RESIDUE_PER_SOCKET = 20


@pytest.fixture(scope="module")
def settings() -> dict[str, str]:
    """The heap settled and counted every second, so the tests wait seconds, not minutes."""
    return {
        "BROADCAST_TIMEOUT_SECONDS": "6",
        "PRESENCE_TTL_SECONDS": "30",
        "HEAP_SETTLE_EVERY_S": "1",
        "HEAP_CHECK_EVERY_S": "1",
    }


def heap_metrics(port: int) -> dict[str, float]:
    """The gateway's heap figures from its /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    names = (
        "weelo_gc_frozen_objects",
        "weelo_full_collection_unreachable_objects_total",
        "weelo_full_collection_seconds_count",
        "weelo_gateway_sockets",
    )
    found = {}
    for name in names:
        match = re.search(rf"^{name} (\S+)$", text, re.M)
        found[name] = float(match.group(1)) if match else 0.0
    return found


async def until_metric(port: int, name: str, check: Callable[[float], bool]) -> float:
    """Poll the gateway's `name` until `check` holds (20 s at most); its value."""
    value = 0.0
    for _ in range(200):
        value = heap_metrics(port)[name]
        if check(value):
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"{name} stayed at {value:.0f}")


async def force_full_collection(system: System) -> tuple[float, float]:
    """SIGUSR1 to gateway 0: the unreachable objects its full collection found, and the size of
    the permanent generation right after it."""
    port, pid = system.gateways[0].port, system.gateways[0].proc.pid
    before = heap_metrics(port)
    os.kill(pid, signal.SIGUSR1)
    count = "weelo_full_collection_seconds_count"
    await until_metric(port, count, lambda n: n > before[count])
    after = heap_metrics(port)
    found = after["weelo_full_collection_unreachable_objects_total"]
    found -= before["weelo_full_collection_unreachable_objects_total"]
    return found, after["weelo_gc_frozen_objects"]


async def freed_without_collection(system: System, use: Callable[[float], Awaitable[int]]) -> None:
    """`use` the gateway once (code run for the first time keeps what it caches), then after a
    full collection once more (it returns how many sockets it opened): once they closed, the
    permanent generation is back at its size before (but for `RESIDUE_PER_SOCKET`) with no
    collection, and a full collection then finds no more than the process's own slack."""
    port, frozen = system.gateways[0].port, "weelo_gc_frozen_objects"
    await use(0.0)
    await until_metric(port, "weelo_gateway_sockets", lambda n: n == 0)
    await force_full_collection(system)
    before = await settled_size(port)
    opened = await use(before)
    await until_metric(port, "weelo_gateway_sockets", lambda n: n == 0)
    await until_metric(port, frozen, lambda n: n <= before + RESIDUE_PER_SOCKET * opened)
    found, _ = await force_full_collection(system)
    assert found <= SLACK, f"{found:.0f} unreachable objects after {opened} sockets"


async def settled_size(port: int) -> float:
    """The permanent generation's smallest count over the next 3 s (3 of the gateway's ticks):
    the last closed sockets' objects may still be going when a collection runs."""
    sizes = []
    for _ in range(30):
        sizes.append(heap_metrics(port)["weelo_gc_frozen_objects"])
        await asyncio.sleep(0.1)
    return min(sizes)


async def send_frames(system: System, users: list[str]) -> None:
    """`FRAMES` availability changes of a new driver of each of `users`, over one connection."""
    async with await psycopg.AsyncConnection.connect(system.env["DATABASE_URL"]) as conn:
        for user in users:
            driver = new_id("d")
            events = [
                DriverAvailabilityChanged(driver_id=driver, transporter_id=user, online=i % 2 == 0)
                for i in range(FRAMES)
            ]
            await append(conn, f"driver-{driver}", 0, events)
            await conn.commit()


async def open_users(system: System, users: list[str], **query: str) -> list[Socket]:
    opening = [system.connect("transporter", u, 0, **query) for u in users for _ in range(PER_USER)]
    return list(await asyncio.gather(*opening))


async def used_sockets(system: System, frozen_before: float) -> int:
    """Sockets opened together, frozen while open, each sent frames, then half closed cleanly
    and half dropped (the client's TCP connection aborted), then as many again resuming from
    their last frame with `lastEventId`."""
    port = system.gateways[0].port
    users = [new_id("t") for _ in range(USERS)]
    sockets = await open_users(system, users)
    grown = frozen_before + len(sockets) * FROZEN_PER_SOCKET
    await until_metric(port, "weelo_gc_frozen_objects", lambda n: n >= grown)
    await send_frames(system, users)
    await asyncio.gather(*(s.count(FRAMES) for s in sockets))
    last = sockets[0].last_id
    for i, socket in enumerate(sockets):
        if i % 2:
            await socket.close()
        else:
            socket.conn.transport.abort()
    again = await open_users(system, users, lastEventId=last)
    await asyncio.gather(*(s.close() for s in again))
    return len(sockets) + len(again)


async def test_sockets_opened_used_and_closed_leave_no_cyclic_garbage(system: System) -> None:
    """Sockets frozen while open, sent frames, closed or dropped and reopened with lastEventId
    are freed by reference counting: the permanent generation returns to its size before and a
    full collection then finds fewer unreachable objects than one per socket."""
    await freed_without_collection(system, lambda before: used_sockets(system, before))


async def refused_and_cut(system: System) -> int:
    """Refused tokens at the upgrade, then the gateway's Redis pub/sub connection cut under
    open sockets (it reconnects and they catch up), then those sockets closed."""
    for token in ("not-a-jwt", "a.b.c"):
        for _ in range(USERS):
            with pytest.raises(InvalidStatus):
                url = system.ws_url(0, token=token)
                async with connect(url, open_timeout=10):
                    pass
    users = [new_id("t") for _ in range(USERS)]
    sockets = await open_users(system, users)
    await cut_pubsub(system)
    await send_frames(system, users)
    await asyncio.gather(*(s.count(FRAMES, timeout=20) for s in sockets))
    await asyncio.gather(*(s.close() for s in sockets))
    return 2 * USERS + len(sockets)


async def test_refused_tokens_and_a_redis_cut_leave_no_cyclic_garbage(system: System) -> None:
    """Refused upgrades and a cut pub/sub connection (reconnected, sockets caught up) leave the
    permanent generation at its size before and no cyclic garbage for a full collection."""
    await freed_without_collection(system, lambda _: refused_and_cut(system))


async def cut_pubsub(system: System) -> None:
    """`CLIENT KILL` the pub/sub connections of gateway 0 only (by their addresses), on the
    shared Redis, so no other test's or process's connection is touched."""
    url = system.env["REDIS_URL"]
    addresses = _connections_of(system.gateways[0].proc.pid, urlsplit(url).port or 6379)
    redis = Redis.from_url(url)
    try:
        clients = await redis.client_list(_type="pubsub")
        killed = [c for c in clients if c["addr"] in addresses]
        assert killed, "gateway 0 has no pub/sub connection"
        for client in killed:
            await redis.client_kill_filter(_id=client["id"])
    finally:
        await redis.aclose()


def _connections_of(pid: int, redis_port: int) -> set[str]:
    """`ip:port` of the TCP connections process `pid` holds to the Redis on `redis_port`."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with _gone():
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = set()
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        local, remote, inode = parts[1], parts[2], parts[9]
        if inode in inodes and int(remote.split(":")[1], 16) == redis_port:
            found.add(f"127.0.0.1:{int(local.split(':')[1], 16)}")
    return found


def _gone() -> contextlib.AbstractContextManager[None]:
    return contextlib.suppress(FileNotFoundError)
