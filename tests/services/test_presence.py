"""Driver availability and the heartbeat TTL (CONTRACT.md section 6), services as real processes."""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from libs.events.client import CommandClient
from libs.events.clock import iso_ms, utc_now
from libs.events.commands import Availability, RegisterDriver, SetAvailability
from libs.readmodel.presence import heartbeats_key, record_heartbeat
from services.presence.sweep import SweepConfig, Sweeper
from tests.events.helpers import eventually
from tests.keys import forget_keys
from tests.processes import environment, services
from tests.services.backends import keep_terminating
from tests.services.helpers import command_client, ok

TTL_S = 1.0


@pytest.fixture(scope="module")
def env(service_env_module: dict[str, str]) -> dict[str, str]:
    return environment(service_env_module, PRESENCE_TTL_SECONDS=str(TTL_S))


@pytest.fixture(scope="module")
def registry(env: dict[str, str], redis_url: str) -> Iterator[None]:
    with services(["broadcast"], env):
        yield
    forget_keys(redis_url, env["REDIS_KEY_PREFIX"])


@pytest.fixture
async def client(
    redis_url: str, registry: None, module_prefix: str
) -> AsyncIterator[CommandClient]:
    async for c in command_client(redis_url, module_prefix):
        yield c


async def new_driver(client: CommandClient) -> str:
    """A driver registered with a new transporter (offline, never seen)."""
    driver = f"d-{uuid.uuid4().hex[:8]}"
    cmd = RegisterDriver(
        transporter_id=f"t-{uuid.uuid4().hex[:8]}", driver_id=driver, name="Ravi", phone="+91"
    )
    assert (await client.send(cmd)).failure is None
    return driver


async def set_online(client: CommandClient, driver: str, online: bool = True) -> Availability:
    return ok(await client.send(SetAvailability(driver_id=driver, online=online)), Availability)


async def driver_row(database_url: str, driver: str) -> tuple[bool, datetime | None]:
    """(online, last_seen_at) of the driver."""
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(
            "SELECT online, last_seen_at FROM drivers WHERE driver_id = %s", (driver,)
        )
        row = await cur.fetchone()
    assert row is not None
    return row[0], row[1]


async def changes(database_url: str, driver: str) -> list[tuple[bool, str, datetime]]:
    """(online, reason, recordedAt) of every availability event of the driver, in order."""
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(
            "SELECT (data->>'online')::boolean, data->>'reason', recorded_at FROM events"
            " WHERE stream_id = %s AND event_type = 'driver_availability_changed'"
            " ORDER BY version",
            (f"driver-{driver}",),
        )
        return [(r[0], r[1], r[2]) for r in await cur.fetchall()]


async def offline(database_url: str, driver: str) -> bool:
    return not (await driver_row(database_url, driver))[0]


async def _reached(moment: float) -> bool:
    return time.time() >= moment


async def wait_until(moment: float) -> None:
    """Let time pass until `moment` (epoch seconds): the scenario needs it, not a race."""
    await eventually(lambda: _reached(moment), timeout=max(0.0, moment - time.time()) + 1)


async def test_each_change_of_availability_emits_one_event_and_a_repeat_none(
    client: CommandClient, env: dict[str, str], database_url: str
) -> None:
    """Online then offline (each sent twice): the read model follows, one event per change."""
    driver = await new_driver(client)
    with services(["presence"], env):
        on = await set_online(client, driver)
        repeat = await set_online(client, driver)
        assert (on.driver_id, on.online, repeat.online) == (driver, True, True)
        assert (await driver_row(database_url, driver))[0] is True
        off = await set_online(client, driver, online=False)
        await set_online(client, driver, online=False)
        online, seen = await driver_row(database_url, driver)
    assert online is False and seen is not None
    recorded = await changes(database_url, driver)
    assert [(o, r) for o, r, _ in recorded] == [(True, "requested"), (False, "requested")]
    assert [on.at, off.at] == [iso_ms(at) for _, _, at in recorded]


async def test_a_repeat_with_no_change_only_refreshes_last_seen(
    client: CommandClient, env: dict[str, str], database_url: str
) -> None:
    """Asking to be online while online records no event but moves lastSeenAt forward."""
    driver = await new_driver(client)
    with services(["presence"], env):
        first = await set_online(client, driver)
        again = await set_online(client, driver)
        _, seen = await driver_row(database_url, driver)
    assert again.online is True and again.at >= first.at
    assert seen is not None and iso_ms(seen) == again.at
    assert len(await changes(database_url, driver)) == 1


async def test_an_unregistered_driver_is_not_found(
    client: CommandClient, env: dict[str, str]
) -> None:
    """A driver no transporter registered cannot go online: not_found."""
    with services(["presence"], env):
        reply = await client.send(SetAvailability(driver_id="d-nobody", online=True))
    assert reply.failure is not None and reply.failure.code == "not_found"
    assert reply.failure.message == "Driver is not registered with a transporter"


async def test_heartbeats_keep_a_driver_online_and_silence_turns_it_offline_after_the_ttl(
    client: CommandClient, env: dict[str, str], database_url: str, redis: Redis, module_prefix: str
) -> None:
    """Heartbeats for three TTLs keep the driver online; once they stop it turns offline after
    the TTL, not before, with one heartbeat_timeout event."""
    driver = await new_driver(client)
    with services(["presence"], env):
        await set_online(client, driver)
        until = time.time() + 3 * TTL_S
        while (now := time.time()) < until:
            await record_heartbeat(redis, module_prefix, driver, int(now * 1000))
            last_beat = int(now * 1000) / 1000
            assert (await driver_row(database_url, driver))[0] is True
            await wait_until(now + 0.2)
        await eventually(lambda: offline(database_url, driver), timeout=5 * TTL_S)
    recorded = await changes(database_url, driver)
    assert [(o, r) for o, r, _ in recorded] == [(True, "requested"), (False, "heartbeat_timeout")]
    went_offline = recorded[-1][2].timestamp()
    assert last_beat + TTL_S <= went_offline <= last_beat + TTL_S + 1.5


async def heartbeat_for(redis: Redis, prefix: str, driver: str, seconds: float) -> float:
    """Heartbeat every 0.2 s for `seconds`; when the last heartbeat was (epoch seconds)."""
    until = time.time() + seconds
    while (now := time.time()) < until:
        await record_heartbeat(redis, prefix, driver, int(now * 1000))
        last_beat = int(now * 1000) / 1000
        await wait_until(now + 0.2)
    return last_beat


async def test_silence_turns_a_driver_offline_after_presence_had_its_connections_terminated(
    client: CommandClient, env: dict[str, str], database_url: str, redis: Redis, module_prefix: str
) -> None:
    """pg_terminate_backend of presence's connections, again and again while the driver
    heartbeats: the process keeps running, and once the heartbeats stop the driver turns
    offline after the TTL, not before."""
    driver = await new_driver(client)
    with services(["presence"], env) as running:
        await set_online(client, driver)
        beating = asyncio.create_task(heartbeat_for(redis, module_prefix, driver, 3 * TTL_S))
        killed = await keep_terminating(database_url, "presence", seconds=3 * TTL_S)
        last_beat = await beating
        assert killed > 0
        assert running["presence"].proc.poll() is None, "presence exited"
        await eventually(lambda: offline(database_url, driver), timeout=5 * TTL_S)
        assert running["presence"].proc.poll() is None, "presence exited"
    recorded = await changes(database_url, driver)
    assert [(o, r) for o, r, _ in recorded] == [(True, "requested"), (False, "heartbeat_timeout")]
    went_offline = recorded[-1][2].timestamp()
    assert last_beat + TTL_S <= went_offline <= last_beat + TTL_S + 1.5


async def test_a_heartbeat_recorded_while_presence_was_down_counts_after_it_restarts(
    client: CommandClient,
    service_env_module: dict[str, str],
    database_url: str,
    redis: Redis,
    module_prefix: str,
) -> None:
    """With presence stopped, a heartbeat lands in Redis; the restarted service counts it: the
    driver turns offline a TTL after that heartbeat, not a TTL after going online."""
    ttl = 3.0
    env = environment(service_env_module, PRESENCE_TTL_SECONDS=str(ttl))
    driver = await new_driver(client)
    with services(["presence"], env):
        await set_online(client, driver)
    _, went_online = await driver_row(database_url, driver)
    assert went_online is not None
    beat = int((went_online.timestamp() + ttl - 0.5) * 1000) / 1000
    await wait_until(beat)
    await record_heartbeat(redis, module_prefix, driver, round(beat * 1000))
    await wait_until(went_online.timestamp() + ttl + 0.2)
    with services(["presence"], env):
        await eventually(lambda: offline(database_url, driver), timeout=3 * ttl)
    recorded = await changes(database_url, driver)
    assert [(o, r) for o, r, _ in recorded] == [(True, "requested"), (False, "heartbeat_timeout")]
    assert recorded[-1][2].timestamp() >= beat + ttl
    _, seen = await driver_row(database_url, driver)
    assert seen is not None and abs(seen.timestamp() - beat) < 0.001


async def test_heartbeats_copied_to_postgresql_survive_a_redis_wipe(
    client: CommandClient,
    service_env_module: dict[str, str],
    database_url: str,
    redis: Redis,
    module_prefix: str,
) -> None:
    """Heartbeats reach drivers.last_seen_at while the driver is online, so after the heartbeat
    set is lost the driver still turns offline a TTL after its last heartbeat, not earlier."""
    ttl = 3.0
    env = environment(service_env_module, PRESENCE_TTL_SECONDS=str(ttl))
    driver = await new_driver(client)
    with services(["presence"], env):
        await set_online(client, driver)
        _, went_online = await driver_row(database_url, driver)
        assert went_online is not None
        beat = int((went_online.timestamp() + ttl - 0.5) * 1000) / 1000
        await wait_until(beat)
        await record_heartbeat(redis, module_prefix, driver, round(beat * 1000))
        await eventually(lambda: _persisted(database_url, driver, beat), timeout=ttl)
        await redis.delete(heartbeats_key(module_prefix))
        await eventually(lambda: offline(database_url, driver), timeout=3 * ttl)
    recorded = await changes(database_url, driver)
    assert recorded[-1][:2] == (False, "heartbeat_timeout")
    assert recorded[-1][2].timestamp() >= beat + ttl


async def _persisted(database_url: str, driver: str, beat: float) -> bool:
    _, seen = await driver_row(database_url, driver)
    return seen is not None and seen.timestamp() >= beat - 0.002


async def test_two_presence_instances_turn_each_silent_driver_offline_once(
    client: CommandClient, env: dict[str, str], database_url: str
) -> None:
    """Two presence processes sweep the same drivers: each times out with exactly one event."""
    drivers = [await new_driver(client) for _ in range(20)]
    with services(["presence", "presence"], env):
        for driver in drivers:
            await set_online(client, driver)
        for driver in drivers:
            await eventually(functools.partial(offline, database_url, driver), timeout=5 * TTL_S)
    for driver in drivers:
        recorded = await changes(database_url, driver)
        assert [(o, r) for o, r, _ in recorded] == [
            (True, "requested"),
            (False, "heartbeat_timeout"),
        ]


@pytest.mark.slow  # four sweepers over 100 drivers: seconds
async def test_concurrent_sweepers_turn_each_silent_driver_offline_exactly_once(
    database_url: str, redis: Redis, prefix: str
) -> None:
    """Four sweepers (each with its own pool, as separate instances) sweep 100 long-silent online
    drivers at the same moment: every driver gets exactly one heartbeat_timeout event."""
    drivers = [f"d-{uuid.uuid4().hex[:8]}" for _ in range(100)]
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO drivers (driver_id, transporter_id, name, phone, online, last_seen_at,"
            " version) SELECT d, 't-sweep', 'Ravi', '+91', true, now() - interval '1 hour', 1"
            " FROM unnest(%s::text[]) AS d",
            (drivers,),
        )
    pools = [
        AsyncConnectionPool(database_url, min_size=1, kwargs={"autocommit": True}, open=False)
        for _ in range(4)
    ]
    for pool in pools:
        await pool.open()
    sweepers = [Sweeper(p, redis, prefix, SweepConfig(ttl_s=TTL_S), utc_now) for p in pools]
    turned = await asyncio.gather(*(s.sweep() for s in sweepers))
    for pool in pools:
        await pool.close()
    assert sum(turned) == len(drivers)
    for driver in drivers:
        recorded = await changes(database_url, driver)
        assert [(o, r) for o, r, _ in recorded] == [(False, "heartbeat_timeout")]
        assert (await driver_row(database_url, driver))[0] is False
