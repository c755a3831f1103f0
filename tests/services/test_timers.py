"""Timers, expiry and cleanup (CONTRACT.md section 8), with every service a real process."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import psycopg
import pytest
from redis.asyncio import Redis

from libs.events.client import CommandClient
from libs.events.commands import AcceptResult, AcceptSlots, BroadcastRef, CancelBroadcast
from services.timer.scheduler import SchedulerConfig
from tests.events.helpers import eventually
from tests.processes import Service, environment, services
from tests.services.backends import keep_terminating, terminate_backends
from tests.services.helpers import command_client, fleet, new_broadcast, ok

TIMEOUT_S = 2.0
BOUND = timedelta(seconds=1)
REBUILD_EVERY_S = SchedulerConfig().rebuild_every_s  # how often the firing loop reads PostgreSQL


@pytest.fixture(scope="module")
def env(service_env_module: dict[str, str]) -> dict[str, str]:
    return environment(service_env_module, BROADCAST_TIMEOUT_SECONDS=str(TIMEOUT_S))


@pytest.fixture(scope="module")
def writers(env: dict[str, str]) -> Iterator[None]:
    with services(["broadcast", "acceptance"], env):
        yield


@pytest.fixture
async def client(redis_url: str, writers: None, module_prefix: str) -> AsyncIterator[CommandClient]:
    async for c in command_client(redis_url, module_prefix):
        yield c


async def ending(database_url: str, ids: list[str]) -> dict[str, tuple[str, datetime, datetime]]:
    """(state, expiresAt, stateChangedAt) of each broadcast."""
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(
            "SELECT broadcast_id, state, expires_at, state_changed_at FROM broadcasts"
            " WHERE broadcast_id = ANY(%s)",
            (ids,),
        )
        return {r[0]: (r[1], r[2], r[3]) for r in await cur.fetchall()}


class Ended(NamedTuple):
    """A broadcast as a polling client first read it expired."""

    state: str
    expires_at: datetime
    changed_at: datetime  # the stateChangedAt the timer stored
    seen_at: datetime  # wall clock just after the first read that returned it expired


POLL_S = 0.02


async def all_expired(database_url: str, ids: list[str], timeout: float = 10.0) -> dict[str, Ended]:
    """Read the broadcasts every 20 ms, as a client polling them would, until each is expired;
    each one's `seen_at` is taken after the read that first showed it expired, so it is never
    earlier than the moment its expiry became visible (whatever the timer stamped)."""
    seen: dict[str, Ended] = {}
    deadline = time.monotonic() + timeout
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        while True:
            cur = await conn.execute(
                "SELECT broadcast_id, state, expires_at, state_changed_at FROM broadcasts"
                " WHERE broadcast_id = ANY(%s)",
                (ids,),
            )
            rows = await cur.fetchall()
            now = datetime.now(UTC)
            for bid, state, expires_at, changed_at in rows:
                assert state in ("broadcasting", "expired"), (bid, state)
                if state == "expired" and bid not in seen:
                    seen[bid] = Ended(state, expires_at, changed_at, now)
            if len(seen) == len(ids):
                return seen
            assert time.monotonic() < deadline, f"not expired in time: {set(ids) - set(seen)}"
            await asyncio.sleep(POLL_S)


async def expiry_events(database_url: str, ids: list[str]) -> dict[str, int]:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(
            "SELECT stream_id, count(*) FROM events WHERE event_type = 'broadcast_expired'"
            " AND stream_id = ANY(%s) GROUP BY stream_id",
            ([f"broadcast-{i}" for i in ids],),
        )
        return {r[0].removeprefix("broadcast-"): r[1] for r in await cur.fetchall()}


def assert_on_time(endings: dict[str, Ended], bound: timedelta = BOUND) -> None:
    """Each broadcast was first seen expired no later than `bound` after its expiresAt, and not
    before it; the stateChangedAt stored lies between expiresAt and that first sighting."""
    for bid, ended in endings.items():
        late = ended.seen_at - ended.expires_at
        assert ended.state == "expired", bid
        assert ended.expires_at <= ended.seen_at <= ended.expires_at + bound, (bid, late)
        assert ended.expires_at <= ended.changed_at <= ended.seen_at, (bid, ended)


async def test_broadcast_expires_no_earlier_than_expires_at_and_within_one_second(
    client: CommandClient, env: dict[str, str], database_url: str
) -> None:
    """With a timer running, a client polling each broadcast first sees it expired within 1 s
    after its expiresAt, and never before."""
    await fleet(client, 1)
    with services(["timer"], env):
        ids = [(await new_broadcast(client))[1] for _ in range(5)]
        assert_on_time(await all_expired(database_url, ids))
    assert await expiry_events(database_url, ids) == dict.fromkeys(ids, 1)


async def test_two_timers_fire_each_timer_once_and_one_killed_hands_over(
    client: CommandClient, env: dict[str, str], database_url: str
) -> None:
    """Two timer instances: every broadcast expires once; SIGKILL of one keeps the 1 s bound."""
    await fleet(client, 1)
    with services(["timer", "timer"], env) as timers:
        ids = [(await new_broadcast(client))[1] for _ in range(20)]
        first_due = min(e for _, e, _ in (await ending(database_url, ids)).values())
        await eventually(lambda: _reached(first_due - timedelta(milliseconds=50)), every=0.005)
        timers["timer"].stop(signal.SIGKILL)
        assert_on_time(await all_expired(database_url, ids))
    assert await expiry_events(database_url, ids) == dict.fromkeys(ids, 1)


async def _reached(moment: datetime) -> bool:
    return datetime.now(UTC) >= moment


async def _expires_on_time_and_timer_runs(
    client: CommandClient, database_url: str, timer: Service
) -> None:
    """Broadcasts created now are first seen expired within 1 s of their expiresAt, and the
    timer process is still running afterwards."""
    ids = [(await new_broadcast(client))[1] for _ in range(3)]
    assert_on_time(await all_expired(database_url, ids))
    assert timer.proc.poll() is None, f"the timer exited with {timer.proc.returncode}"
    assert await expiry_events(database_url, ids) == dict.fromkeys(ids, 1)


async def test_a_timer_whose_postgresql_connections_are_terminated_keeps_expiring_on_time(
    client: CommandClient, env: dict[str, str], database_url: str
) -> None:
    """pg_terminate_backend of the timer's connections, again and again for longer than a
    rebuild interval: the process keeps running and broadcasts created afterwards expire on
    time."""
    await fleet(client, 1)
    with services(["timer"], env) as timers:
        killed = await keep_terminating(database_url, "timer", seconds=REBUILD_EVERY_S + 1)
        assert killed > 0
        assert timers["timer"].proc.poll() is None, "the timer exited"
        await _expires_on_time_and_timer_runs(client, database_url, timers["timer"])


async def test_a_frozen_timer_whose_connections_were_terminated_carries_on_when_it_wakes(
    client: CommandClient, env: dict[str, str], database_url: str
) -> None:
    """A timer frozen (SIGSTOP) past a rebuild interval while its PostgreSQL connections are
    terminated several times keeps running after SIGCONT and expires broadcasts on time."""
    await fleet(client, 1)
    with services(["timer"], env) as timers:
        timer = timers["timer"]
        timer.proc.send_signal(signal.SIGSTOP)
        try:
            killed = 0
            for _ in range(3):
                killed += await terminate_backends(database_url, "timer")
                await asyncio.sleep((REBUILD_EVERY_S + 0.5) / 3)
        finally:
            timer.proc.send_signal(signal.SIGCONT)
        assert killed > 0
        await asyncio.sleep(1.0)  # the woken timer meets its dead connections
        assert timer.proc.poll() is None, "the timer exited"
        await _expires_on_time_and_timer_runs(client, database_url, timer)


async def test_overdue_broadcasts_expire_within_one_second_of_a_timer_coming_back(
    client: CommandClient,
    env: dict[str, str],
    database_url: str,
    redis_url: str,
    module_prefix: str,
) -> None:
    """With no timer running past the due time (and Redis wiped meanwhile), a timer that comes
    back expires every overdue broadcast, once, within 1 s of being up."""
    await fleet(client, 1)
    ids = [(await new_broadcast(client))[1] for _ in range(10)]
    last_due = max(e for _, e, _ in (await ending(database_url, ids)).values())
    await eventually(lambda: _reached(last_due + timedelta(milliseconds=300)), every=0.02)
    await _wipe(redis_url, module_prefix)
    with services(["timer"], env):
        up = datetime.now(UTC)  # once it answers /health
        endings = await all_expired(database_url, ids)
    for bid, ended in endings.items():
        assert ended.state == "expired" and ended.seen_at <= up + BOUND, (bid, ended.seen_at - up)
        assert ended.expires_at <= ended.changed_at <= ended.seen_at, (bid, ended)
    assert await expiry_events(database_url, ids) == dict.fromkeys(ids, 1)


async def _wipe(redis_url: str, prefix: str) -> None:
    redis = Redis.from_url(redis_url)
    keys = [k async for k in redis.scan_iter(match=f"{prefix}*", count=1000)]
    if keys:
        await redis.delete(*keys)
    await redis.aclose()


async def test_pending_broadcasts_expire_on_time_after_redis_lost_every_key(
    client: CommandClient,
    env: dict[str, str],
    database_url: str,
    redis_url: str,
    module_prefix: str,
) -> None:
    """Deleting every key under the prefix while broadcasts wait: they expire on time, a claim
    afterwards is refused as expired, and a new broadcast claimed by 30 transporters at once
    still has exactly one winner."""
    transporters = await fleet(client, 30)
    with services(["timer"], env):
        ids = [(await new_broadcast(client))[1] for _ in range(5)]
        await _wipe(redis_url, module_prefix)
        assert_on_time(await all_expired(database_url, ids))
        late = await client.send(
            AcceptSlots(
                transporter_id=transporters[0], broadcast_id=ids[0], vehicle_type="open_17ft"
            )
        )
        assert late.failure is not None and late.failure.code == "request_expired"
        _, fresh = await new_broadcast(client)
        replies = await asyncio.gather(
            *(
                client.send(
                    AcceptSlots(transporter_id=t, broadcast_id=fresh, vehicle_type="open_17ft")
                )
                for t in transporters
            )
        )
        assert sum(r.failure is None for r in replies) == 1
        assert {r.failure.code for r in replies if r.failure} == {"no_longer_available"}


async def members_of(redis: Redis, key: bytes) -> list[bytes]:
    kind = (await redis.type(key)).decode()
    if kind == "set":
        return list(await redis.smembers(key))
    if kind == "zset":
        return list(await redis.zrange(key, 0, -1))
    return []


async def names_of(redis: Redis, broadcast_id: str, prefix: str) -> list[str]:
    """Every Redis key whose name contains the id (any prefix: the system must create none
    outside its own), and every set or sorted-set member under the prefix that contains it."""
    found = [k.decode() async for k in redis.scan_iter(match=f"*{broadcast_id}*", count=5000)]
    async for key in redis.scan_iter(match=f"{prefix}*", count=1000):
        if any(broadcast_id in m.decode() for m in await members_of(redis, key)):
            found.append(f"{key.decode()} (member)")
    return found


@pytest.mark.parametrize("end", ["fully_filled", "cancelled", "expired"])
async def test_no_redis_key_or_member_names_a_broadcast_within_5_s_of_its_end(
    client: CommandClient,
    env: dict[str, str],
    database_url: str,
    redis_url: str,
    module_prefix: str,
    end: str,
) -> None:
    """After a broadcast is fully filled, cancelled or expired, within 5 s no Redis key name and
    no set or sorted-set member contains its id."""
    [transporter] = await fleet(client, 1)
    redis = Redis.from_url(redis_url)
    with services(["timer"], env):
        customer, bid = await new_broadcast(client)
        await eventually(lambda: _has_name(redis, bid, module_prefix), timeout=5)
        if end == "fully_filled":
            ok(
                await client.send(
                    AcceptSlots(
                        transporter_id=transporter, broadcast_id=bid, vehicle_type="open_17ft"
                    )
                ),
                AcceptResult,
            )
        elif end == "cancelled":
            ok(
                await client.send(CancelBroadcast(customer_id=customer, broadcast_id=bid)),
                BroadcastRef,
            )
        else:
            await all_expired(database_url, [bid])
        ended = time.monotonic()
        await eventually(lambda: _clean(redis, bid, module_prefix), timeout=5, every=0.1)
        assert time.monotonic() - ended <= 5
    await redis.aclose()


async def _has_name(redis: Redis, bid: str, prefix: str) -> bool:
    return bool(await names_of(redis, bid, prefix))


async def _clean(redis: Redis, bid: str, prefix: str) -> bool:
    return not await names_of(redis, bid, prefix)
