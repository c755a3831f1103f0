"""REDIS_KEY_PREFIX (CONTRACT.md section 1): every Redis key the system creates starts with it.

Comparing the key names before and after a run misses a key that was created and deleted in
between, so the test watches Redis itself: a `MONITOR` connection records every command the
services send while a whole story runs (the commands their Lua scripts run included), and
`COMMAND GETKEYS` names the keys each one touches. The services run on a Redis database index
of their own, so the commands of anything else using the server are told apart by it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import psycopg
import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError
from websockets.asyncio.client import connect

from libs.runtime.tokens import Role, issue
from tests.events.helpers import eventually
from tests.processes import environment, services

SERVICES = ("gateway", "broadcast", "acceptance", "timer", "presence", "fanout")
STORY_DB = 9  # a Redis database index no other test uses
TIMEOUT_S = 3.0  # the broadcast left to expire does so within the test

# Commands whose arguments name channels, not keys: the channels must carry the prefix too, or
# two deployments would hear each other.
CHANNEL_COMMANDS = {
    b"PUBLISH": slice(1, 2),
    b"SPUBLISH": slice(1, 2),
    b"SUBSCRIBE": slice(1, None),
    b"SSUBSCRIBE": slice(1, None),
    b"PSUBSCRIBE": slice(1, None),
}
# Commands that act on the whole keyspace, past any prefix.
WHOLE_KEYSPACE = {b"FLUSHALL", b"FLUSHDB", b"RANDOMKEY", b"SWAPDB", b"MOVE", b"SELECT"}
_HEAD = re.compile(rb"^\d+\.\d+ \[(\d+) [^\]]*\] ")
_ESCAPES = {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("a"): 7, ord("b"): 8}


@pytest.fixture(scope="module")
def database_url(module_database: str) -> str:
    return module_database


def on_database(url: str, db: int) -> str:
    """`url` pointing at Redis database `db` (a redis:// path or a unix:// `db=` query)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "db"]
    if parts.scheme == "unix":
        return urlunsplit(parts._replace(query=urlencode([*query, ("db", str(db))])))
    return urlunsplit(parts._replace(path=f"/{db}", query=urlencode(query)))


def parse_monitor_line(line: bytes) -> tuple[int, list[bytes]]:
    """(database index, arguments) of one MONITOR line: `<time> [<db> <client>] "a" "b"...`,
    each argument quoted as Redis' sdscatrepr writes it (\\\\, \\", \\n, \\xHH...)."""
    head = _HEAD.match(line)
    assert head is not None, line
    args: list[bytes] = []
    i = head.end()
    while i < len(line):
        if line[i] == ord(" "):
            i += 1
            continue
        assert line[i] == ord('"'), line
        i += 1
        arg = bytearray()
        while line[i] != ord('"'):
            if line[i] == ord("\\"):
                code = line[i + 1]
                if code == ord("x"):
                    arg.append(int(line[i + 2 : i + 4], 16))
                    i += 4
                else:
                    arg.append(_ESCAPES.get(code, code))
                    i += 2
            else:
                arg.append(line[i])
                i += 1
        args.append(bytes(arg))
        i += 1
    return int(head.group(1)), args


def test_monitor_lines_are_parsed_back_to_their_arguments() -> None:
    """Quotes, backslashes, spaces, control and non-ASCII bytes come back as they were sent."""
    line = rb'1764640000.123456 [9 lua] "SET" "a \"b\" \\c" "\x00\xff\n" ""'
    assert parse_monitor_line(line) == (9, [b"SET", b'a "b" \\c', b"\x00\xff\n", b""])
    assert parse_monitor_line(b'1.5 [0 127.0.0.1:6000] "PING"') == (0, [b"PING"])


class Monitor:
    """Every command Redis runs while it is open, as raw MONITOR lines."""

    def __init__(self, redis_url: str) -> None:
        self._redis = Redis.from_url(redis_url, protocol=2)
        self.lines: list[bytes] = []
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Monitor:
        pool: Any = self._redis.connection_pool
        self._connection = await pool.get_connection()
        await self._connection.send_command("MONITOR")
        assert await self._connection.read_response() in (b"OK", "OK")
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        while True:
            line = await self._connection.read_response()
            self.lines.append(line if isinstance(line, bytes) else str(line).encode())

    async def __aexit__(self, *exc: object) -> None:
        assert self._reader is not None
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self._connection.disconnect()
        await self._redis.aclose()


async def keys_named(redis: Redis, commands: list[list[bytes]]) -> set[bytes]:
    """Every key that one of `commands` names, as `COMMAND GETKEYS` finds it (a command with no
    key arguments names none)."""
    distinct = list({tuple(c): c for c in commands}.values())
    found: set[bytes] = set()
    for start in range(0, len(distinct), 500):
        pipe = redis.pipeline(transaction=False)
        for command in distinct[start : start + 500]:
            pipe.command_getkeys(*command)
        for reply in await pipe.execute(raise_on_error=False):
            if not isinstance(reply, ResponseError):  # redis-py hands the names back decoded
                found.update(k if isinstance(k, bytes) else str(k).encode() for k in reply)
    return found


def _pattern(name: bytes, args: list[bytes]) -> bytes | None:
    """The key pattern a KEYS or SCAN command matches (SCAN without MATCH: every key)."""
    if name == b"KEYS":
        return args[0]
    if name == b"SCAN":
        upper = [a.upper() for a in args]
        return args[upper.index(b"MATCH") + 1] if b"MATCH" in upper else b"*"
    return None


def outside_the_prefix(commands: list[list[bytes]], keys: set[bytes], prefix: bytes) -> list[str]:
    """Each key, channel, scanned pattern or keyspace-wide command of `commands` that does not
    stay under `prefix`, described."""
    problems = [f"key {k!r}" for k in sorted(keys) if not k.startswith(prefix)]
    for command in commands:
        name, args = command[0].upper(), command[1:]
        if name in CHANNEL_COMMANDS:
            channels = command[CHANNEL_COMMANDS[name]]
            problems += [f"channel {c!r}" for c in channels if not c.startswith(prefix)]
        pattern = _pattern(name, args)
        if pattern is not None and not pattern.startswith(prefix):
            problems.append(f"pattern {command!r}")
        own_database = name == b"SELECT" and args == [str(STORY_DB).encode()]
        if name in WHOLE_KEYSPACE and not own_database:
            problems.append(f"command {command!r}")
    return problems


async def names_of(redis: Redis, broadcast_id: str, prefix: str) -> list[str]:
    """Keys under the prefix whose name contains the id, and set or sorted-set members under the
    prefix that contain it (the test's own reads stay under the prefix)."""
    found = [_text(k) async for k in redis.scan_iter(match=f"{prefix}*{broadcast_id}*")]
    async for key in redis.scan_iter(match=f"{prefix}*", count=1000):
        kind = _text(await redis.type(key))
        members: Any = []
        if kind == "set":
            members = await redis.smembers(key)
        elif kind == "zset":
            members = await redis.zrange(key, 0, -1)
        if any(broadcast_id in _text(m) for m in members):
            found.append(f"{_text(key)} (member)")
    return found


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


@pytest.fixture
async def story_redis(redis_url: str, prefix: str) -> AsyncIterator[Redis]:
    """A client on the story's database; afterwards every key there that the run left (under the
    prefix or, if the test fails, not) is deleted."""
    client = Redis.from_url(on_database(redis_url, STORY_DB))
    yield client
    with contextlib.suppress(Exception):
        keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
    await client.aclose()


async def _expired(database_url: str, broadcast_id: str) -> bool:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(
            "SELECT state FROM broadcasts WHERE broadcast_id = %s", (broadcast_id,)
        )
        row = await cur.fetchone()
    return row is not None and row[0] == "expired"


async def test_every_key_a_whole_story_touches_starts_with_the_prefix(
    service_env: dict[str, str],
    redis_url: str,
    prefix: str,
    story_redis: Redis,
    database_url: str,
) -> None:
    """Every key any command of the services names while a whole story runs (a socket, a
    vehicle, a driver going online with a heartbeat, a search accepted and its driver assigned,
    another search left to expire, and both cleaned up), every pub/sub channel they use and every
    key pattern they scan starts with REDIS_KEY_PREFIX, keys created and deleted again in
    between included."""
    env = environment(
        service_env,
        REDIS_URL=on_database(redis_url, STORY_DB),
        BROADCAST_TIMEOUT_SECONDS=str(TIMEOUT_S),
    )
    async with Monitor(redis_url) as monitor:
        with services(SERVICES, env) as running:
            await _story(env, running["gateway"].port, database_url, story_redis, prefix)
    assert monitor.lines, "MONITOR saw nothing"
    parsed = [parse_monitor_line(line) for line in monitor.lines]
    ours = [args for db, args in parsed if db == STORY_DB and args]
    keys = await keys_named(story_redis, ours)
    assert any(k.startswith(prefix.encode()) for k in keys), "no key of the story was seen"
    for key in keys - {k for k in keys if k.startswith(prefix.encode())}:
        await story_redis.delete(key)  # a stray key the test found: do not leave it behind
    assert outside_the_prefix(ours, keys, prefix.encode()) == []


async def _story(
    env: dict[str, str], port: int, database_url: str, redis: Redis, prefix: str
) -> None:
    """Drive the story through the gateway; return once both broadcasts were cleaned up."""
    base = f"http://127.0.0.1:{port}"

    def auth(role: Role, sub: str) -> dict[str, str]:
        token = issue(env["JWT_SECRET"], role=role, sub=sub, ttl_s=300)
        return {"Authorization": f"Bearer {token}"}

    t, c, c2, d = (f"{k}-{uuid.uuid4().hex[:8]}" for k in ("t", "c", "c", "d"))
    async with httpx.AsyncClient(base_url=base, timeout=10) as api:
        socket = await connect(
            f"ws://127.0.0.1:{port}/v1/ws", additional_headers=auth("transporter", t)
        )
        vehicle = {"vehicleType": "open_17ft", "lat": 12.97, "lng": 77.59}
        put = await api.put(
            f"/v1/transporters/me/vehicles/v-{t}", json=vehicle, headers=auth("transporter", t)
        )
        assert put.status_code == 200, put.text
        driver = {"name": "Ravi", "phone": "+911234567890"}
        put = await api.put(
            f"/v1/transporters/me/drivers/{d}", json=driver, headers=auth("transporter", t)
        )
        assert put.status_code == 200, put.text
        online = await api.put(
            "/v1/drivers/me/availability", json={"online": True}, headers=auth("driver", d)
        )
        assert online.status_code == 200, online.text
        beat = await api.post("/v1/drivers/me/heartbeat", headers=auth("driver", d))
        assert beat.status_code == 204, beat.text
        search = {
            "pickup": {"lat": 12.97, "lng": 77.59},
            "drop": {"lat": 13.0, "lng": 77.6},
            "trucks": [{"vehicleType": "open_17ft", "quantity": 1}],
        }
        created = await api.post(
            "/v1/broadcasts", json=search, headers={**auth("customer", c), "Idempotency-Key": "k1"}
        )
        assert created.status_code == 201, created.text
        types = [json.loads(await asyncio.wait_for(socket.recv(), 10))["type"] for _ in range(2)]
        assert types == ["driver_status_changed", "new_broadcast"]
        bid = created.json()["broadcastId"]
        accepted = await api.post(
            f"/v1/broadcasts/{bid}/accept",
            json={"vehicleType": "open_17ft", "quantity": 1},
            headers=auth("transporter", t),
        )
        assert accepted.status_code == 200, accepted.text
        assignment = accepted.json()["assignments"][0]["assignmentId"]
        assigned = await api.post(
            f"/v1/assignments/{assignment}/driver",
            json={"driverId": d, "vehicleId": f"v-{t}"},
            headers=auth("transporter", t),
        )
        assert assigned.status_code == 200, assigned.text
        left = await api.post("/v1/broadcasts", json=search, headers=auth("customer", c2))
        assert left.status_code == 201, left.text
        await socket.close()
    other = left.json()["broadcastId"]
    await eventually(lambda: _expired(database_url, other), timeout=TIMEOUT_S + 5)
    for broadcast in (bid, other):  # the contract's bound for cleaning up after an end
        await eventually(functools.partial(_gone, redis, broadcast, prefix), timeout=5.0, every=0.1)


async def _gone(redis: Redis, broadcast_id: str, prefix: str) -> bool:
    return not await names_of(redis, broadcast_id, prefix)
