"""The service's side of the command bus: run each command of its stream once.

`command_handler` turns a service's handler table (`handlers.CommandHandlers`) and its
dependencies into a `StreamRunner` handler. Each command runs in one PostgreSQL transaction
together with the record of its reply, after reading the outcome its command id may already have
(a redelivery or a keyed retry answers that instead of running again); a command past its
deadline is dropped unexecuted. Each entry's command is decoded once (`commands`), by its
ordering key (`command_key`) when the runner reads it. The caller's side is `client.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, TypeVar

import msgspec
import psycopg
import structlog
from psycopg import errors
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from libs.events import outcomes
from libs.events.batching import Batcher
from libs.events.commands import (
    CommandEnvelope,
    Failure,
    Rejected,
    Reply,
    command_decoder,
    encode,
)
from libs.events.delivery import EntryDecoder
from libs.events.failures import message_for
from libs.events.handlers import CommandHandlers, CommandRun, Conn
from libs.events.runner import Delivery, Handler, PoisonMessage
from libs.events.store import ConcurrencyConflict

log = structlog.get_logger(__name__)

D = TypeVar("D")

UNAVAILABLE = Failure(code="unavailable", message=message_for("unavailable"))
CONFLICT_RETRIES = 8


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
