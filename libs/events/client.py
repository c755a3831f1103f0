"""The caller's side of the command bus: send a command to its service and await its reply.

`CommandClient.send` XADDs a `CommandEnvelope` to `<prefix>commands:<service>` and waits on
this instance's reply channel (`<prefix>replies:<instance>`, pub/sub). When no reply comes in
time, the XADD failed, or the service answered `unavailable` (which it cannot know to be true:
an earlier delivery, or its own failed commit, may have taken effect), it settles the command in
PostgreSQL before answering: the outcome if the command took effect, else its attempt is
abandoned and can never take effect (`CommandTimeout`, a true 503). The service's side is
`executor.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import msgspec
import psycopg
import structlog
from psycopg_pool import PoolTimeout
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from libs.events import outcomes
from libs.events.batching import Batcher
from libs.events.commands import (
    ROUTES,
    AnyCommand,
    CommandEnvelope,
    Reply,
    commands_stream,
    encode,
    reply_channel,
    reply_decoder,
)
from libs.events.metrics import COMMAND_TIMEOUTS

log = structlog.get_logger(__name__)


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
        if reply.failure is not None and reply.failure.code == "unavailable":
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
