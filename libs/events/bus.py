"""Commands over Redis Streams: the client that sends them and awaits replies, and the executor
that runs them in a service.

- `CommandClient.send` XADDs a `CommandEnvelope` to `<prefix>commands:<service>` and waits on
  this instance's reply channel (`<prefix>replies:<instance>`, pub/sub). When no reply comes in
  time, the XADD failed, or the service answered `unavailable` (which it cannot know to be true:
  an earlier delivery, or its own failed commit, may have taken effect), it settles the command
  in PostgreSQL before answering: the outcome if the command took effect, else its attempt is
  abandoned and can never take effect (`CommandTimeout`, a true 503).
- `command_handler` turns a service's handler table (`handlers.CommandHandlers`) and its
  dependencies into a `StreamRunner` handler. Each command runs in one PostgreSQL transaction
  together with the record of its reply, after reading the outcome its command id may already
  have (a redelivery or a keyed retry answers that instead of running again); a command past its
  deadline is dropped unexecuted. Each entry's command is decoded once (`commands`), by its
  ordering key (`command_key`) when the runner reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any, TypeVar

import msgspec
import psycopg
import structlog
from psycopg import errors
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from libs.events import outcomes
from libs.events.batching import Batcher
from libs.events.commands import (
    ROUTES,
    AnyCommand,
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
from libs.events.delivery import EntryDecoder
from libs.events.failures import message_for
from libs.events.handlers import CommandHandlers, CommandRun, Conn
from libs.events.metrics import COMMAND_TIMEOUTS
from libs.events.runner import Delivery, Handler, PoisonMessage
from libs.events.store import ConcurrencyConflict

log = structlog.get_logger(__name__)

D = TypeVar("D")

UNAVAILABLE = Failure(code="unavailable", message=message_for("unavailable"))
CONFLICT_RETRIES = 8


class CommandTimeout(Exception):
    """No reply arrived in time, and the command did not and will not take effect."""


class CommandUnsettled(Exception):
    """No reply arrived in time, and PostgreSQL could not be reached to settle the command: its
    outcome is unknown until a retry with the same command id asks again."""


class ServiceUnavailable(Exception):
    """The service answered `unavailable`: its own attempt failed, but an earlier delivery or
    attempt of the command may have taken effect (or its commit may have), so the answer is
    settled like a reply that never came."""


REPLY_GRACE_S = 1.0  # waited past the deadline: a command started before it may be committing


class CommandClient:
    """Sends commands and matches replies to waiting callers, for one gateway instance.

    `abandon` settles a command whose reply did not come (`outcomes.abandoner(pool)`); without it
    a missing reply is `CommandUnsettled`."""

    def __init__(
        self,
        redis: Redis,
        prefix: str,
        instance: str,
        timeout_s: float = 5.0,
        *,
        abandon: outcomes.Abandon | None = None,
    ) -> None:
        self._redis, self._prefix, self._timeout = redis, prefix, timeout_s
        self._abandon = abandon
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
        """Send `command` to its service; its reply, or `CommandTimeout` when it did not and will
        not take effect (or `CommandUnsettled` when that could not be made sure of)."""
        envelope = CommandEnvelope(
            command_id=command_id or str(uuid.uuid4()),
            attempt=uuid.uuid4().hex,
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
            reply = await asyncio.wait_for(future, self._timeout + REPLY_GRACE_S)
        except (TimeoutError, RedisError, OSError) as e:  # an XADD that failed may have happened
            return await self._settle(envelope, e)
        finally:
            self._waiting.pop(envelope.command_id, None)
        if reply.failure is not None and reply.failure.code == UNAVAILABLE.code:
            return await self._settle(envelope, ServiceUnavailable(reply.failure.message))
        return reply

    async def _settle(self, envelope: CommandEnvelope, cause: Exception) -> Reply:
        """The outcome of a command whose reply did not come, or `CommandTimeout` once its
        attempt can no longer take effect."""
        command_id = envelope.command_id
        if self._abandon is None:
            COMMAND_TIMEOUTS.labels("unsettled").inc()
            raise CommandUnsettled(command_id) from cause
        try:
            recorded = await self._abandon(command_id, envelope.attempt)
        except (psycopg.Error, PoolTimeout) as e:
            COMMAND_TIMEOUTS.labels("unsettled").inc()
            log.error("command_unsettled", command_id=command_id, error=repr(e), cause=repr(cause))
            raise CommandUnsettled(command_id) from e
        if recorded is None:
            COMMAND_TIMEOUTS.labels("abandoned").inc()
            log.warning("command_abandoned", command_id=command_id, cause=repr(cause))
            raise CommandTimeout(command_id) from cause
        COMMAND_TIMEOUTS.labels("settled").inc()
        log.info("command_settled_after_timeout", command_id=command_id)
        return Reply(
            command_id=command_id, result=msgspec.Raw(recorded.reply), replayed=recorded.earlier
        )

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
        except msgspec.DecodeError as e:  # an unknown failure code too: a newer service
            log.warning("reply_undecodable", error=str(e))
            return
        future = self._waiting.get(reply.command_id)
        if future is not None and not future.done():
            future.set_result(reply)


def _command(fields: dict[bytes, bytes]) -> CommandEnvelope:
    try:
        return command_decoder.decode(fields.get(b"command") or b"")
    except msgspec.DecodeError as e:
        raise PoisonMessage(f"not a command: {e}") from e


commands: EntryDecoder[CommandEnvelope] = EntryDecoder(_command)


def decode_command(delivery: Delivery) -> CommandEnvelope:
    """The entry's command (decoded once per entry), or `PoisonMessage` if it holds none."""
    return commands(delivery)


def command_key(delivery: Delivery) -> str:
    try:
        return commands(delivery).command.ordering_key()
    except PoisonMessage:
        return delivery.entry_id


def command_handler(
    table: CommandHandlers[D], deps: D, pool: AsyncConnectionPool[Any], redis: Redis
) -> Handler:
    """A runner handler executing each command with its table entry and `deps` and publishing
    the reply (the replies of one loop turn in one pipeline). An entry with `many` also runs the
    commands after it in the batch that it can take along (same key and type, first delivery)."""
    runs = table.bind(deps)
    replies = Batcher(redis)
    together: set[str] = set()  # commands already run along with an earlier one of their batch

    async def handle(delivery: Delivery) -> None:
        envelope = commands(delivery)
        if envelope.command_id in together:
            together.discard(envelope.command_id)
            return
        if time.time() > envelope.deadline:
            log.warning("command_expired_unexecuted", command_id=envelope.command_id)
            return
        run = runs.get(type(envelope.command))
        if run is None:
            raise PoisonMessage(f"no handler for {type(envelope.command).__name__}")
        group = _taken_along(envelope, delivery, run)
        with structlog.contextvars.bound_contextvars(correlation_id=envelope.correlation_id):
            if len(group) > 1:
                answers = await execute_many(pool, group, run)
                together.update(e.command_id for e in group[1:])
            else:
                answers = [await execute(pool, envelope, run)]
        await asyncio.gather(
            *(
                replies.execute("PUBLISH", e.reply_to, encode(reply))
                for e, reply in zip(group, answers, strict=True)
                if e.reply_to
            )
        )

    return handle


def _taken_along(
    first: CommandEnvelope, delivery: Delivery, run: CommandRun
) -> list[CommandEnvelope]:
    """`first`, then the commands right after it in the batch a batched handler runs with it:
    of the same type, delivered for the first time, not past their deadline, each command id
    once."""
    group = [first]
    if not run.batched or delivery.deliveries > 1:
        return group
    now = time.time()
    for later in delivery.later:
        try:
            envelope = commands(later)
        except PoisonMessage:
            break
        kind_differs = type(envelope.command) is not type(first.command)
        again = any(e.command_id == envelope.command_id for e in group)
        if kind_differs or again or later.deliveries > 1 or now > envelope.deadline:
            break
        group.append(envelope)
    return group


async def execute(
    pool: AsyncConnectionPool[Any], envelope: CommandEnvelope, run: CommandRun
) -> Reply:
    """Run the command in a transaction that also records the reply; retry write conflicts."""
    for _ in range(CONFLICT_RETRIES):
        try:
            return await _attempt(pool, envelope, run)
        except (ConcurrencyConflict, errors.SerializationFailure, errors.DeadlockDetected):
            continue
        except psycopg.Error as e:
            log.error("command_failed", command_id=envelope.command_id, error=str(e))
            return Reply(command_id=envelope.command_id, failure=UNAVAILABLE)
    log.error("command_conflicts_exhausted", command_id=envelope.command_id)
    return Reply(command_id=envelope.command_id, failure=UNAVAILABLE)


async def execute_many(
    pool: AsyncConnectionPool[Any], envelopes: list[CommandEnvelope], run: CommandRun
) -> list[Reply]:
    """Run commands read together in one transaction (`run.many`), retrying write conflicts; if
    that cannot be done (one of them already has an outcome, or the database failed), run each on
    its own."""
    for _ in range(CONFLICT_RETRIES):
        try:
            return await _attempt_many(pool, envelopes, run)
        except (ConcurrencyConflict, errors.SerializationFailure, errors.DeadlockDetected):
            continue
        except (_Settled, psycopg.Error) as e:
            log.warning("batch_run_one_by_one", commands=len(envelopes), error=repr(e))
            break
    return [await execute(pool, e, run) for e in envelopes]


async def _attempt_many(
    pool: AsyncConnectionPool[Any], envelopes: list[CommandEnvelope], run: CommandRun
) -> list[Reply]:
    if run.many is None:
        raise _Settled(None)  # a type not run together: each runs on its own
    async with pool.connection() as conn, conn.pipeline(), conn.transaction():
        earlier = await conn.execute(outcomes.STORED, ([e.command_id for e in envelopes],))
        decided = await run.many(conn, [e.command for e in envelopes])
        if await earlier.fetchall():
            raise _Settled(None)  # some already took effect: each answers on its own
        done = {
            e.command_id: (e.command_id, e.attempt, encode(outcome))
            for e, outcome in zip(envelopes, decided, strict=True)
            if not isinstance(outcome, Rejected)
        }
        if done and not await outcomes.record(conn, list(done.values())):
            raise _Settled(None)
    return [
        Reply(command_id=e.command_id, failure=outcome.failure)
        if isinstance(outcome, Rejected)
        else Reply(command_id=e.command_id, result=msgspec.Raw(done[e.command_id][2]))
        for e, outcome in zip(envelopes, decided, strict=True)
    ]


async def _attempt(
    pool: AsyncConnectionPool[Any], envelope: CommandEnvelope, run: CommandRun
) -> Reply:
    """One try: the command's recorded outcome if it has one, else its handler's, recorded with
    it."""
    async with pool.connection() as conn:
        mode = conn.pipeline() if run.batched else contextlib.nullcontext()
        try:
            async with mode, conn.transaction():
                return await _decide(conn, envelope, run)
        except _Settled as settled:
            return settled.reply or await _outcome_elsewhere(conn, envelope.command_id)


async def _decide(conn: Conn, envelope: CommandEnvelope, run: CommandRun) -> Reply:
    """Inside the command's transaction. The earlier outcome is read first (in pipeline mode it
    travels with the command's own first queries) and wins over this attempt's decision."""
    command_id = envelope.command_id
    earlier = await conn.execute(outcomes.STORED, ([command_id],), prepare=True)
    try:
        raw = encode(await run.one(conn, envelope.command))
    except Rejected as refusal:
        await _raise_if_recorded(earlier, command_id)
        raise _Settled(Reply(command_id=command_id, failure=refusal.failure)) from None
    await _raise_if_recorded(earlier, command_id)
    if not await outcomes.record(conn, [(command_id, envelope.attempt, raw)]):
        raise _Settled(None)
    return Reply(command_id=command_id, result=msgspec.Raw(raw))


async def _raise_if_recorded(earlier: psycopg.AsyncCursor[Any], command_id: str) -> None:
    row = await earlier.fetchone()
    if row is not None:
        replayed = Reply(command_id=command_id, result=msgspec.Raw(row[1].encode()), replayed=True)
        raise _Settled(replayed)


class _Settled(Exception):
    """End the attempt's transaction (rolling it back) with `reply`; None when the outcome was
    recorded by someone else meanwhile (or this attempt was abandoned): read it afterwards."""

    def __init__(self, reply: Reply | None) -> None:
        self.reply = reply


async def _outcome_elsewhere(conn: Conn, command_id: str) -> Reply:
    """The outcome another attempt recorded; none means this attempt was abandoned (its caller
    was answered 503), so its reply is that."""
    recorded = (await outcomes.stored(conn, [command_id])).get(command_id)
    if recorded is None:
        return Reply(command_id=command_id, failure=UNAVAILABLE)
    return Reply(command_id=command_id, result=msgspec.Raw(recorded), replayed=True)
