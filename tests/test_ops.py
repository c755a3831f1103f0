"""`weelo ops lag` and `weelo ops dead-letters` (CONTRACT.md section 1) as real processes
against the test Redis and PostgreSQL: what they show, and replay and purge doing what they say."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from redis.asyncio import Redis

from libs.events import deadletter
from libs.events.catalogue import BusProbe
from libs.events.commands import commands_stream
from libs.events.dispatch import envelope_of
from libs.events.retry import Failures
from libs.events.runner import Delivery, PoisonMessage, RunnerConfig, StreamRunner
from libs.events.store import append
from libs.events.streams import dead_letter_stream, events_stream
from tests.events.helpers import eventually
from tests.events.runners import Running, probe_entry
from tests.processes import run_weelo

pytestmark = pytest.mark.process  # every test runs `weelo ops` as a process of its own

QUICK = RunnerConfig(block_ms=20, reclaim_interval_s=0.02)


@pytest.fixture(scope="module")
def database_url(module_database: str) -> str:
    """A database of its own: the outbox count is this module's alone."""
    return module_database


@pytest.fixture
def env(database_url: str, redis_url: str, prefix: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEST_", "PYTEST_"))}
    env.update(DATABASE_URL=database_url, REDIS_URL=redis_url, REDIS_KEY_PREFIX=prefix)
    return env


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    r = Running()
    yield r
    await r.close()


def weelo(env: dict[str, str], *args: str, code: int = 0) -> str:
    """Run `weelo ARGS...`; its standard output, after checking its exit code."""
    done = run_weelo(env, *args)
    assert done.returncode == code, done.stderr
    return done.stdout


def weelo_json(env: dict[str, str], *args: str) -> Any:
    return json.loads(weelo(env, *args, "--json"))


async def test_lag_shows_waiting_pending_oldest_outbox_and_role_holders(
    redis: Redis, prefix: str, env: dict[str, str], conn: psycopg.AsyncConnection[Any]
) -> None:
    """Per stream and group: unread entries, pending ones, the oldest pending one's age and the
    ones being retried; committed events still in the outbox; who holds each single-holder
    role (its lease's holder and token)."""
    commands = commands_stream(prefix, "acceptance")
    await redis.xgroup_create(commands, "acceptance", id="0", mkstream=True)
    ids = [await redis.xadd(commands, {b"command": b"x"}) for _ in range(5)]
    await redis.xreadgroup("acceptance", "c", {commands: ">"}, count=3)
    await redis.xack(commands, "acceptance", ids[0])
    await Failures(redis, commands, "acceptance").record(ids[1].decode(), 1, "boom")
    events = events_stream(prefix, "broadcast")
    await redis.xgroup_create(events, "projector", id="0", mkstream=True)
    await redis.xadd(events, probe_entry("probe-x", 1))
    for i in range(2):
        async with conn.transaction():
            await append(conn, f"probe-{uuid.uuid4()}", 0, [BusProbe(sequence=i)])
    for role, holder, token in (("relay", "broadcast-h-1", 7), (f"projector:{prefix}", "g-1", 3)):
        await conn.execute(
            "INSERT INTO leases VALUES (%s, %s, %s, now() + interval '1 min', now())"
            " ON CONFLICT (role) DO UPDATE SET holder = excluded.holder, token = excluded.token,"
            " expires_at = excluded.expires_at",
            (role, holder, token),
        )
    report = weelo_json(env, "ops", "lag")
    text = weelo(env, "ops", "lag")
    groups = {(g["stream"], g["group"]): g for g in report["groups"]}
    acceptance = groups[(commands, "acceptance")]
    assert (acceptance["waiting"], acceptance["pending"], acceptance["retrying"]) == (2, 2, 1)
    assert acceptance["oldestPendingAgeS"] >= 0
    projector = groups[(events, "projector")]
    assert (projector["waiting"], projector["pending"], projector["oldestPendingAgeS"]) == (
        1,
        0,
        None,
    )
    assert report["outbox"]["events"] == 2
    roles = {r["role"]: r for r in report["roles"]}
    assert (roles["projector"]["holder"], roles["projector"]["token"]) == ("g-1", 3)
    assert (roles["relay"]["holder"], roles["relay"]["token"]) == ("broadcast-h-1", 7)
    assert roles["relay"]["until"] > roles["relay"]["since"]
    assert commands in text and "outbox: 2 committed events not yet on a stream" in text


async def poisoned(redis: Redis, prefix: str, running: Running, group: str = "g") -> bytes:
    """A real runner of `group` dead-letters one probe entry; the entry's id."""
    stream = events_stream(prefix, "probe")

    async def handle(d: Delivery) -> None:
        raise PoisonMessage(f"cannot project {envelope_of(d).stream_id}")

    running.start(
        StreamRunner(
            redis,
            stream=stream,
            group=group,
            consumer="c",
            handler=handle,
            dead_letter=dead_letter_stream(prefix),
            config=QUICK,
        )
    )
    entry = await redis.xadd(stream, probe_entry("probe-bad", 1))
    await eventually(lambda: _length(redis, dead_letter_stream(prefix), 1))
    return entry


async def _length(redis: Redis, stream: str, length: int) -> bool:
    return int(await redis.xlen(stream)) == length


async def test_dead_letters_lists_and_shows_what_a_runner_gave_up_on(
    redis: Redis, prefix: str, env: dict[str, str], running: Running
) -> None:
    """The list names stream, group, entry, attempts, first failure and error; `--show` gives
    one record in full, with the entry's own fields."""
    entry = await poisoned(redis, prefix, running)
    [listed] = weelo_json(env, "ops", "dead-letters")
    assert listed["stream"] == events_stream(prefix, "probe")
    assert (listed["group"], listed["entryId"], listed["deliveries"]) == ("g", entry.decode(), 1)
    assert listed["error"] == "poison: cannot project probe-bad"
    assert listed["firstFailure"].endswith("Z")
    table = weelo(env, "ops", "dead-letters")
    assert listed["id"] in table and "poison: cannot project probe-bad" in table
    shown = weelo_json(env, "ops", "dead-letters", "--show", listed["id"])
    [(_, original)] = await redis.xrange(events_stream(prefix, "probe"), entry, entry)
    assert shown["fields"] == {"envelope": original[b"envelope"].decode()}
    text = weelo(env, "ops", "dead-letters", "--show", listed["id"])
    assert f"entryId: {entry.decode()}" in text and "  envelope: {" in text
    weelo(env, "ops", "dead-letters", "--show", "1-1", code=1)


async def test_replay_puts_the_entry_back_for_its_group_only_and_removes_the_dead_letter(
    redis: Redis, prefix: str, env: dict[str, str], running: Running
) -> None:
    """A replayed entry is a new entry of its stream: the group it was dead-lettered by runs it
    with exactly its original fields; another group of the stream does not run it again."""
    stream, seen = events_stream(prefix, "probe"), {"fixed": [], "other": []}
    broken = {"yes": True}

    def handler(group: str) -> Any:
        async def handle(d: Delivery) -> None:
            if group == "fixed" and broken["yes"]:
                raise PoisonMessage("not yet")
            seen[group].append((d.entry_id, d.fields, d.deliveries))

        return handle

    for group in ("fixed", "other"):
        running.start(
            StreamRunner(
                redis,
                stream=stream,
                group=group,
                consumer="c",
                handler=handler(group),
                dead_letter=dead_letter_stream(prefix),
                config=QUICK,
            )
        )
    fields = probe_entry("probe-r", 1)
    entry = await redis.xadd(stream, fields)
    await eventually(lambda: _length(redis, dead_letter_stream(prefix), 1))
    await eventually(lambda: _true(len(seen["other"]) == 1))
    [listed] = weelo_json(env, "ops", "dead-letters")
    broken["yes"] = False
    out = weelo(env, "ops", "dead-letters", "--replay", listed["id"])
    assert f"replayed {listed['id']} to {stream} for group fixed as " in out
    await eventually(lambda: _true(len(seen["fixed"]) == 1))
    [(new_id, got, deliveries)] = seen["fixed"]
    assert (got, deliveries) == (fields, 1) and new_id != entry.decode()
    await eventually(lambda: _read_past(redis, stream, "other", new_id))
    assert len(seen["other"]) == 1
    assert await redis.xlen(dead_letter_stream(prefix)) == 0


async def _true(value: bool) -> bool:
    return value


async def _read_past(redis: Redis, stream: str, group: str, entry_id: str) -> bool:
    """The group read `entry_id` and has nothing pending."""
    groups: Any = await redis.xinfo_groups(stream)
    found = next(g for g in groups if g["name"].decode() == group)
    return found["last-delivered-id"].decode() == entry_id and int(found["pending"]) == 0


async def test_purge_removes_named_records_and_replay_all_replays_the_rest(
    redis: Redis, prefix: str, env: dict[str, str]
) -> None:
    """`--purge ID` removes that record only; `--replay-all` puts every remaining entry back on
    its stream and empties the dead-letter stream; a purge of an unknown id exits 1."""
    dead, stream = dead_letter_stream(prefix), commands_stream(prefix, "presence")
    records = []
    for n in (1, 2):
        written = deadletter.record(
            stream=stream,
            group="presence",
            entry_id=f"{n}-0",
            deliveries=7,
            error="boom",
            consumer="c",
            first_failure_ms=1_700_000_000_000,
            fields={b"command": f"c{n}".encode()},
        )
        records.append((await redis.xadd(dead, written)).decode())
    assert "purged " + records[0] in weelo(env, "ops", "dead-letters", "--purge", records[0])
    assert [d["id"] for d in weelo_json(env, "ops", "dead-letters")] == [records[1]]
    weelo(env, "ops", "dead-letters", "--replay-all")
    assert await redis.xlen(dead) == 0
    [(_, back)] = await redis.xrange(stream)
    assert back == {b"command": b"c2", deadletter.REPLAY_FIELD: b"presence"}
    weelo(env, "ops", "dead-letters", "--purge", "1-1", code=1)
