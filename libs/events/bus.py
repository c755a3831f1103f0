"""Commands over Redis Streams: the client that sends them and awaits replies, and the executor
that runs them in a service.

- `CommandClient.send` XADDs a `CommandEnvelope` to `<prefix>commands:<service>` and waits on
  this instance's reply channel (`<prefix>replies:<instance>`, pub/sub).
- `command_handler` turns a service's handler table into a `StreamRunner` handler. Each command
  runs in one PostgreSQL transaction together with the record of its reply; a command past its
  deadline is dropped unexecuted (its sender has already answered "unavailable"), and a command
  already executed (a redelivery) gets its stored reply instead of running again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec
import psycopg
import structlog
from psycopg import errors
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from libs.events.batching import Batcher
from libs.events.commands import (
    ROUTES,
    AnyCommand,
    Command,
    CommandEnvelope,
    Failure,
    Rejected,
    Reply,
    command_decoder,
    commands_stream,
    encode,
    reply_channel,
    reply_decoder,
)
from libs.events.runner import Delivery, Handler, PoisonMessage
from libs.events.store import ConcurrencyConflict

log = structlog.get_logger(__name__)

Conn = psycopg.AsyncConnection[Any]
CommandFn = Callable[[Conn, Any], Awaitable[msgspec.Struct]]
CommandTable = Mapping[type[Command], CommandFn]
ManyFn = Callable[[Conn, list[Any]], Awaitable[list[Any]]]


class Batched:
    """A command handler that can also run several commands of one ordering key, read in one
    batch, in one transaction: `many(conn, commands)` answers each command's result, or its
    `Rejected`, exactly as running them one after another would. Under load a batch holds many
    claims of one broadcast; deciding them together takes one lock, one commit and one flush of
    the WAL instead of one each.

    Its transactions (of one command or many) run in psycopg's pipeline mode: `BEGIN` goes out
    with the first query and `COMMIT` with nothing else waiting, two round trips fewer. So its
    functions must fetch every result they act on (an error surfaces at a fetch or at the end of
    a `conn.pipeline()` block, not at `execute`)."""

    def __init__(self, fn: CommandFn, many: ManyFn) -> None:
        self.fn, self.many = fn, many

    async def __call__(self, conn: Conn, command: Any) -> msgspec.Struct:
        return await self.fn(conn, command)


UNAVAILABLE = Failure(
    code="unavailable", message="A dependency is unavailable; nothing was changed"
)
CONFLICT_RETRIES = 8


class CommandTimeout(Exception):
    """No reply arrived before the deadline (the command was not, and will not be, executed)."""


class CommandClient:
    """Sends commands and matches replies to waiting callers, for one gateway instance."""

    def __init__(self, redis: Redis, prefix: str, instance: str, timeout_s: float = 5.0) -> None:
        self._redis, self._prefix, self._timeout = redis, prefix, timeout_s
        self._batcher = Batcher(redis)  # the commands of one loop turn go in one pipeline
        self._channel = reply_channel(prefix, instance)
        self._waiting: dict[str, asyncio.Future[Reply]] = {}
        self._pubsub: PubSub | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        await self._pubsub.subscribe(self._channel)
        self._reader = asyncio.create_task(self._read_replies())

    async def close(self) -> None:
        if self._reader:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._pubsub:
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]

    async def send(
        self,
        command: AnyCommand,
        *,
        command_id: str | None = None,
        correlation_id: str | None = None,
    ) -> Reply:
        """Send `command` to its service; its reply, or `CommandTimeout`."""
        envelope = CommandEnvelope(
            command_id=command_id or str(uuid.uuid4()),
            reply_to=self._channel,
            deadline=time.time() + self._timeout,
            correlation_id=correlation_id,
            command=command,
        )
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._waiting[envelope.command_id] = future
        try:
            stream = commands_stream(self._prefix, ROUTES[type(command)])
            await self._batcher.execute("XADD", stream, "*", b"command", encode(envelope))
            # Wait past the deadline: a command started before it may still be committing.
            return await asyncio.wait_for(future, self._timeout + 1.0)
        except TimeoutError as e:
            raise CommandTimeout(envelope.command_id) from e
        finally:
            self._waiting.pop(envelope.command_id, None)

    async def _read_replies(self) -> None:
        while True:
            try:
                assert self._pubsub is not None
                async for message in self._pubsub.listen():
                    self._resolve(message["data"])
            except (ConnectionError, OSError, Exception) as e:  # reconnect and resubscribe
                log.warning("reply_channel_lost", error=str(e))
                await asyncio.sleep(0.5)
                with contextlib.suppress(Exception):
                    assert self._pubsub is not None
                    await self._pubsub.subscribe(self._channel)

    def _resolve(self, raw: bytes) -> None:
        try:
            reply = reply_decoder.decode(raw)
        except msgspec.DecodeError:
            log.warning("reply_undecodable")
            return
        future = self._waiting.get(reply.command_id)
        if future is not None and not future.done():
            future.set_result(reply)


def decode_command(delivery: Delivery) -> CommandEnvelope:
    raw = delivery.fields.get(b"command")
    try:
        return command_decoder.decode(raw or b"")
    except msgspec.DecodeError as e:
        raise PoisonMessage(f"not a command: {e}") from e


def command_key(delivery: Delivery) -> str:
    try:
        return decode_command(delivery).command.ordering_key()
    except PoisonMessage:
        return delivery.entry_id


def command_handler(table: CommandTable, pool: AsyncConnectionPool[Any], redis: Redis) -> Handler:
    """A runner handler executing each command with its table entry and publishing the reply
    (the replies of one loop turn in one pipeline). A `Batched` entry also runs the commands
    after it in the batch that it can take along (same key and type, first delivery)."""
    replies = Batcher(redis)
    together: set[str] = set()  # commands already run along with an earlier one of their batch

    async def handle(delivery: Delivery) -> None:
        envelope = decode_command(delivery)
        if envelope.command_id in together:
            together.discard(envelope.command_id)
            return
        if time.time() > envelope.deadline:
            log.warning("command_expired_unexecuted", command_id=envelope.command_id)
            return
        fn = table.get(type(envelope.command))
        if fn is None:
            raise PoisonMessage(f"no handler for {type(envelope.command).__name__}")
        group = _taken_along(envelope, delivery, fn)
        with structlog.contextvars.bound_contextvars(correlation_id=envelope.correlation_id):
            if isinstance(fn, Batched) and len(group) > 1:
                answers = await execute_many(pool, group, fn)
                together.update(e.command_id for e in group[1:])
            else:
                answers = [await execute(pool, envelope, fn, redelivered=delivery.deliveries > 1)]
        await asyncio.gather(
            *(
                replies.execute("PUBLISH", e.reply_to, encode(reply))
                for e, reply in zip(group, answers, strict=True)
                if e.reply_to
            )
        )

    return handle


def _taken_along(
    first: CommandEnvelope, delivery: Delivery, fn: CommandFn
) -> list[CommandEnvelope]:
    """`first`, then the commands right after it in the batch a `Batched` handler runs with it:
    of the same type, delivered for the first time, not past their deadline."""
    group = [first]
    if not isinstance(fn, Batched) or delivery.deliveries > 1:
        return group
    now = time.time()
    for later in delivery.later:
        try:
            envelope = decode_command(later)
        except PoisonMessage:
            break
        kind_differs = type(envelope.command) is not type(first.command)
        if kind_differs or later.deliveries > 1 or now > envelope.deadline:
            break
        group.append(envelope)
    return group


async def execute(
    pool: AsyncConnectionPool[Any], envelope: CommandEnvelope, fn: CommandFn, *, redelivered: bool
) -> Reply:
    """Run `fn` in a transaction that also records the reply; retry write conflicts."""
    for _ in range(CONFLICT_RETRIES):
        try:
            return await _attempt(pool, envelope, fn, redelivered)
        except (ConcurrencyConflict, errors.SerializationFailure, errors.DeadlockDetected):
            continue
        except _AlreadyExecuted as done:
            return done.reply
        except psycopg.Error as e:
            log.error("command_failed", command_id=envelope.command_id, error=str(e))
            return Reply(command_id=envelope.command_id, failure=UNAVAILABLE)
    log.error("command_conflicts_exhausted", command_id=envelope.command_id)
    return Reply(command_id=envelope.command_id, failure=UNAVAILABLE)


class _AlreadyExecuted(Exception):
    def __init__(self, reply: Reply) -> None:
        self.reply = reply


async def execute_many(
    pool: AsyncConnectionPool[Any], envelopes: list[CommandEnvelope], fn: Batched
) -> list[Reply]:
    """Run commands read together in one transaction, retrying write conflicts; if that cannot
    be done (one of them already ran, or the database failed), run each on its own."""
    for _ in range(CONFLICT_RETRIES):
        try:
            return await _attempt_many(pool, envelopes, fn)
        except (ConcurrencyConflict, errors.SerializationFailure, errors.DeadlockDetected):
            continue
        except (_Duplicate, psycopg.Error) as e:
            log.warning("batch_run_one_by_one", commands=len(envelopes), error=repr(e))
            break
    return [await execute(pool, e, fn, redelivered=True) for e in envelopes]


async def _attempt_many(
    pool: AsyncConnectionPool[Any], envelopes: list[CommandEnvelope], fn: Batched
) -> list[Reply]:
    async with pool.connection() as conn, conn.pipeline(), conn.transaction():
        outcomes = await fn.many(conn, [e.command for e in envelopes])
        done = {
            e.command_id: encode(outcome)
            for e, outcome in zip(envelopes, outcomes, strict=True)
            if not isinstance(outcome, Rejected)
        }
        if done and not await _record(conn, done):
            raise _Duplicate
    return [
        Reply(command_id=e.command_id, failure=outcome.failure)
        if isinstance(outcome, Rejected)
        else Reply(command_id=e.command_id, result=msgspec.Raw(done[e.command_id]))
        for e, outcome in zip(envelopes, outcomes, strict=True)
    ]


async def _attempt(
    pool: AsyncConnectionPool[Any], envelope: CommandEnvelope, fn: CommandFn, redelivered: bool
) -> Reply:
    command_id = envelope.command_id
    async with pool.connection() as conn:
        if redelivered and (stored := await _stored_reply(conn, command_id)):
            return stored
        mode = conn.pipeline() if isinstance(fn, Batched) else contextlib.nullcontext()
        try:
            async with mode, conn.transaction():
                raw = encode(await fn(conn, envelope.command))
                if not await _record(conn, {command_id: raw}):
                    raise _Duplicate
        except Rejected as e:
            return Reply(command_id=command_id, failure=e.failure)
        except _Duplicate:
            stored = await _stored_reply(conn, command_id)
            raise _AlreadyExecuted(
                stored or Reply(command_id=command_id, failure=UNAVAILABLE)
            ) from None
    return Reply(command_id=command_id, result=msgspec.Raw(raw))


class _Duplicate(Exception):
    """The same command committed elsewhere first; roll this attempt back."""


async def _record(conn: Conn, replies: dict[str, bytes]) -> bool:
    """Store each command's reply with its effects; False if one was already stored."""
    cur = await conn.execute(
        "INSERT INTO command_results (command_id, reply)"
        " SELECT * FROM unnest(%s::text[], %s::jsonb[]) ON CONFLICT DO NOTHING RETURNING 1",
        (list(replies), [raw.decode() for raw in replies.values()]),
        prepare=True,
    )
    return len(await cur.fetchall()) == len(replies)


async def _stored_reply(conn: Conn, command_id: str) -> Reply | None:
    cur = await conn.execute(
        "SELECT reply::text FROM command_results WHERE command_id = %s", (command_id,)
    )
    row = await cur.fetchone()
    if row is None:
        return None
    return Reply(command_id=command_id, result=msgspec.Raw(row[0].encode()), replayed=True)
