"""The lease of a single-holder role (libs/events/lease.py), with real processes holding it: it
moves within 10 s when its holder is frozen (SIGSTOP) or killed, at once when the holder stops,
and a frozen holder that wakes up writes nothing after its successor (contract section 8)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from libs.events.lease import Held, Lease, LeaseConfig, acquire

ROOT = Path(__file__).resolve().parents[2]
MOVES_WITHIN_S = 10.0


class Holders:
    """`tests.events.lease_proc` processes competing for one role, and their fenced log."""

    def __init__(self, database_url: str, redis_url: str, prefix: str, tmp: Path) -> None:
        self.args = [database_url, redis_url, f"role-{uuid.uuid4().hex[:8]}"]
        self.log, self.fence = f"{prefix}lease-log", f"{prefix}lease-fence"
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str) -> None:
        out = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 - the process keeps it
        self.procs[name] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.events.lease_proc",
                *self.args,
                name,
                self.log,
                self.fence,
            ],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def output(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def signal(self, name: str, sig: signal.Signals) -> None:
        os.kill(self.procs[name].pid, sig)

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
            proc.wait()


@pytest.fixture
def holders(database_url: str, redis_url: str, prefix: str, tmp_path: Path) -> Iterator[Holders]:
    running = Holders(database_url, redis_url, prefix, tmp_path)
    yield running
    running.close()


async def _entries(redis: Redis, stream: str) -> list[tuple[str, int]]:
    """(holder, token) of every fenced append, in stream order."""
    found: Any = await redis.xrange(stream)
    return [(f[b"holder"].decode(), int(f[b"token"])) for _id, f in found]


async def _first_write_of(redis: Redis, holders: Holders, name: str) -> float:
    """Wait until `name` has appended; the monotonic time it was first seen."""
    deadline = time.monotonic() + MOVES_WITHIN_S + 5.0
    while time.monotonic() < deadline:
        if any(h == name for h, _ in await _entries(redis, holders.log)):
            return time.monotonic()
        await asyncio.sleep(0.02)
    raise AssertionError(f"{name} never wrote:\n{holders.output(name)}")


async def _until_output(holders: Holders, name: str, text: str) -> None:
    deadline = time.monotonic() + MOVES_WITHIN_S
    while text not in holders.output(name):
        assert time.monotonic() < deadline, f"{name} never printed {text!r}"
        await asyncio.sleep(0.05)


def _in_token_order(entries: list[tuple[str, int]]) -> bool:
    tokens = [token for _, token in entries]
    return tokens == sorted(tokens)


@pytest.mark.process  # `holders` starts lease_proc processes
async def test_a_frozen_holder_is_replaced_within_10_s_and_writes_nothing_once_awake(
    holders: Holders, redis: Redis
) -> None:
    """SIGSTOP the holder: the other process takes the role within 10 s; SIGCONT it: it stops
    holding, and no write of its token lands after its successor's first one."""
    holders.start("first")
    await _first_write_of(redis, holders, "first")
    holders.start("second")
    holders.signal("first", signal.SIGSTOP)
    frozen_at = time.monotonic()
    moved_at = await _first_write_of(redis, holders, "second")
    assert moved_at - frozen_at <= MOVES_WITHIN_S
    holders.signal("first", signal.SIGCONT)
    await _until_output(holders, "first", "stopped")
    entries = await _entries(redis, holders.log)
    assert _in_token_order(entries), "a write of an older token landed after a newer one"
    assert {h for h, _ in entries} == {"first", "second"}


@pytest.mark.process  # `holders` starts lease_proc processes
async def test_a_killed_holder_is_replaced_within_10_s(holders: Holders, redis: Redis) -> None:
    """SIGKILL the holder: the process standing by takes the role within 10 s."""
    holders.start("first")
    await _first_write_of(redis, holders, "first")
    holders.start("second")
    holders.signal("first", signal.SIGKILL)
    killed_at = time.monotonic()
    assert await _first_write_of(redis, holders, "second") - killed_at <= MOVES_WITHIN_S
    assert _in_token_order(await _entries(redis, holders.log))


@pytest.mark.process  # `holders` starts lease_proc processes
async def test_a_holder_that_stops_hands_the_role_over_at_once(
    holders: Holders, redis: Redis
) -> None:
    """SIGTERM the holder: it lets the lease go as it stops, so the other process takes it
    well before the lease would have expired."""
    holders.start("first")
    await _first_write_of(redis, holders, "first")
    holders.start("second")
    await _until_output(holders, "second", "lease_standing_by")
    holders.signal("first", signal.SIGTERM)
    stopped_at = time.monotonic()
    assert await _first_write_of(redis, holders, "second") - stopped_at < 2.0


async def test_an_unhealthy_holder_lets_the_role_go(database_url: str) -> None:
    """A holder whose health check fails (cut off from what its role writes to) ends its work
    and releases the lease, and another instance acquires it at once."""
    role = f"role-{uuid.uuid4().hex[:8]}"
    config = LeaseConfig(ttl_s=30.0, renew_s=0.2, retry_s=0.1)
    healthy = asyncio.Event()
    healthy.set()
    started, ended = asyncio.Event(), asyncio.Event()

    async def check() -> bool:
        return healthy.is_set()

    async def work(held: Held) -> None:
        started.set()
        await held.ended.wait()
        ended.set()

    async with AsyncConnectionPool(
        database_url, min_size=1, max_size=3, open=False, kwargs={"autocommit": True}
    ) as pool:
        stop = asyncio.Event()
        lease = Lease(pool, role, "sick", config=config, healthy=check)
        holding = asyncio.create_task(lease.hold_forever(work, stop))
        await asyncio.wait_for(started.wait(), 5.0)
        healthy.clear()
        await asyncio.wait_for(ended.wait(), 5.0)
        async with pool.connection() as conn:
            for _ in range(50):
                taken = await acquire(conn, role, "healthy", config)
                if taken is not None:
                    break
                await asyncio.sleep(0.02)
        stop.set()
        await holding
    assert taken is not None and taken.token == 2
