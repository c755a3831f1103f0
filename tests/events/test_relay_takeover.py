"""The outbox relay's role moving between real service processes (CONTRACT.md section 8): when
the process publishing committed events is killed (SIGKILL) or frozen (SIGSTOP), another running
instance publishes within 10 s; every event reaches its stream once and in order, also after a
frozen holder wakes up. (test_relay.py covers a graceful stop, test_lease.py the lease itself.)"""

from __future__ import annotations

import os
import signal
import time
import urllib.request
import uuid
from typing import Any

import psycopg
import pytest
from redis.asyncio import Redis

from libs.events.codec import envelope_from_fields
from libs.events.relay import RELAY_ROLE
from libs.events.streams import events_stream
from tests.events.helpers import append_probes, eventually
from tests.processes import Service, environment, services

MOVES_WITHIN_S = 10.0
HELD = 'weelo_lease_held{role="relay"} 1.0'


@pytest.fixture(scope="module")
def database_url(module_database: str) -> str:
    """These tests need the database's only relays to be their own processes."""
    return module_database


async def _holder_pid(database_url: str) -> int | None:
    """The pid of the process holding the relay's lease (its instance name holds it)."""
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(
            "SELECT holder FROM leases WHERE role = %s AND expires_at > now()", (RELAY_ROLE,)
        )
        row = await cur.fetchone()
    return None if row is None else int(str(row[0]).split("-")[-2])


def _holds_relay(service: Service) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{service.port}/metrics", timeout=5) as reply:
        return HELD in reply.read().decode()


async def _versions(redis: Redis, stream: str, stream_id: str) -> list[int]:
    """The versions of `stream_id`'s events on `stream`, in stream order."""
    found: Any = await redis.xrange(stream)
    entries = [envelope_from_fields(f) for _, f in found]
    return [e.version for e in entries if e.stream_id == stream_id]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "frozen"])
async def test_the_relay_moves_within_10_s_when_its_holder_is_killed_or_frozen(
    sig: signal.Signals,
    service_env: dict[str, str],
    database_url: str,
    redis: Redis,
    prefix: str,
    conn: psycopg.AsyncConnection,
) -> None:
    """Two service processes; the one holding the relay is SIGKILLed or SIGSTOPped: events
    committed after that are on their stream within 10 s, published by the other; a frozen
    holder woken afterwards lets the role go and publishes nothing again."""
    stream_id, target = f"probe-{uuid.uuid4()}", events_stream(prefix, "probe")
    with services(["presence", "presence"], environment(service_env)) as running:
        await append_probes(conn, stream_id, 1)
        await eventually(lambda: _published(redis, target, stream_id, 1))
        pid = await _holder_pid(database_url)
        [holder] = [s for s in running.values() if s.proc.pid == pid]
        [other] = [s for s in running.values() if s is not holder]
        assert _holds_relay(holder) and not _holds_relay(other)
        os.kill(holder.proc.pid, sig)
        hit = time.monotonic()
        try:
            await append_probes(conn, stream_id, 3, start=1)
            await eventually(
                lambda: _published(redis, target, stream_id, 4), timeout=MOVES_WITHIN_S + 5
            )
            moved_after = time.monotonic() - hit
            assert moved_after <= MOVES_WITHIN_S, moved_after
            assert _holds_relay(other)
        finally:
            if sig == signal.SIGSTOP:
                os.kill(holder.proc.pid, signal.SIGCONT)
        if sig == signal.SIGSTOP:
            await eventually(lambda: _async(not _holds_relay(holder)), timeout=MOVES_WITHIN_S)
        await append_probes(conn, stream_id, 1, start=4)
        await eventually(lambda: _published(redis, target, stream_id, 5))
        assert await _versions(redis, target, stream_id) == [1, 2, 3, 4, 5]
        if sig == signal.SIGSTOP:
            assert holder.proc.poll() is None, "the woken holder exited"


async def _published(redis: Redis, stream: str, stream_id: str, count: int) -> bool:
    return len(await _versions(redis, stream, stream_id)) >= count


async def _async(value: bool) -> bool:
    return value
