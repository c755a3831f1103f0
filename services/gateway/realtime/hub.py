"""The gateway's half of fan-out: one Redis pub/sub connection per gateway process.

It is subscribed to the wake channel of every user with a socket on this process (subscribed on
the user's first socket, unsubscribed after the last) and hands each published frame to that
user's connections without waiting on any of them. A socket is attached only once Redis has
confirmed its subscription, so a replay read after that misses nothing. When the pub/sub
connection is re-established, every connection catches up from its inbox, so frames published
while it was down are not lost. A user holds at most `max_sockets_per_user` accepted sockets on
the process: one more closes the oldest (`opened`).

On a Redis Cluster the connection is a `ClusterPubSub` on the node of its first channel (this
process's own): a cluster passes every `PUBLISH` to all its nodes, so the delivery script's
publish on the master of a user's inbox shard reaches it wherever it is connected.

It also keeps the heartbeats of the drivers with a socket here (`heartbeats.py`) and the garbage
collector's pauses short (`heap.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import structlog
from prometheus_client import Gauge
from redis.asyncio import Redis
from redis.exceptions import RedisError

from libs.events.streams import bus_losses_key
from libs.inbox.inbox import Inbox
from libs.runtime.heap import tend_heap
from services.gateway.realtime.connection import Connection
from services.gateway.realtime.heartbeats import SocketHeartbeats
from services.gateway.realtime.lag import watch_loop_lag
from services.gateway.realtime.losses import watch_losses
from services.gateway.realtime.wire import RESYNC_REQUIRED

log = structlog.get_logger(__name__)

SOCKETS = Gauge("weelo_gateway_sockets", "Open WebSockets on this gateway process")


@dataclass(frozen=True)
class HubConfig:
    max_pending: int = 256
    max_sockets_per_user: int = 10  # on this process; one more closes the user's oldest
    presence_ttl_s: float = 30.0
    reconnect_s: float = 0.5
    subscribe_timeout_s: float = 5.0


@dataclass(slots=True)
class _Subscription:
    confirmed: asyncio.Future[None]
    connections: set[Connection] = field(default_factory=set)
    accepted: dict[Connection, None] = field(default_factory=dict)  # oldest first


class Hub:
    def __init__(
        self, redis: Redis, inbox: Inbox, prefix: str, instance: str, config: HubConfig
    ) -> None:
        self._redis, self._inbox, self._prefix, self.config = redis, inbox, prefix, config
        self._own = f"{prefix}wake-hub:{instance}"
        self._losses = bus_losses_key(prefix)
        self._pubsub = redis.pubsub()
        self._ready = asyncio.Event()
        self._subs: dict[str, _Subscription] = {}
        self._pending: dict[str, deque[asyncio.Future[None]]] = {}
        self.heartbeats = SocketHeartbeats(redis, prefix, config.presence_ttl_s)
        self._background: set[asyncio.Task[Any]] = set()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Read the pub/sub connection, send heartbeats and keep garbage-collector pauses short
        (`heap.py`) for as long as the app runs."""
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(self._read_forever(stop)),
            asyncio.create_task(self.heartbeats.run(stop)),
            asyncio.create_task(watch_loop_lag(stop)),
            asyncio.create_task(tend_heap(stop)),
            asyncio.create_task(watch_losses(self._redis, self._losses, self.resync_all, stop)),
        ]
        try:
            yield
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.aclose()  # type: ignore[no-untyped-call]

    async def attach(self, conn: Connection) -> None:
        """Deliver the user's frames to `conn` from now on; returns once Redis confirmed it."""
        async with asyncio.timeout(self.config.subscribe_timeout_s):
            await self._ready.wait()
        sub = self._subs.get(conn.user)
        if sub is None:
            sub = self._subs[conn.user] = _Subscription(asyncio.get_running_loop().create_future())
            channel = self._inbox.channel(conn.user)
            self._pending.setdefault(channel, deque()).append(sub.confirmed)
            self._spawn(self._subscribe(channel, sub.confirmed))
        sub.connections.add(conn)
        SOCKETS.inc()
        try:
            async with asyncio.timeout(self.config.subscribe_timeout_s):
                await asyncio.shield(sub.confirmed)
        except BaseException:
            self.detach(conn)
            raise

    def opened(self, conn: Connection) -> None:
        """`conn`'s socket was accepted: close the user's oldest ones past the most allowed.
        The oldest, not the newest: the socket a client just opened is the one it uses (an old
        one may be a phone's on a network it left, open here until its pings time out)."""
        sub = self._subs.get(conn.user)
        if sub is None or conn not in sub.connections:
            return
        sub.accepted[conn] = None
        while len(sub.accepted) > self.config.max_sockets_per_user:
            oldest = next(iter(sub.accepted))
            self.detach(oldest)
            oldest.close_replaced()

    def resync_all(self) -> int:
        """Send `resync_required` to every socket here; how many."""
        connections = [c for sub in self._subs.values() for c in sub.connections]
        for conn in connections:
            conn.send_control(RESYNC_REQUIRED)
        return len(connections)

    def detach(self, conn: Connection) -> None:
        sub = self._subs.get(conn.user)
        if sub is None or conn not in sub.connections:
            return
        sub.connections.discard(conn)
        sub.accepted.pop(conn, None)
        SOCKETS.dec()
        if not sub.connections:
            del self._subs[conn.user]
            self._spawn(self._pubsub.unsubscribe(self._inbox.channel(conn.user)))

    async def _subscribe(self, channel: str, confirmed: asyncio.Future[None]) -> None:
        """SUBSCRIBE; each one sent is confirmed once, in order (`_confirmed` pops `confirmed`).
        One that failed to go out is never confirmed: its waiter fails now."""
        try:
            await self._pubsub.subscribe(channel)
        except (RedisError, OSError) as e:
            waiting = self._pending.get(channel)
            if waiting is not None and confirmed in waiting:
                waiting.remove(confirmed)
                if not waiting:
                    del self._pending[channel]
            if not confirmed.done():
                confirmed.set_exception(e)

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("pubsub_command_failed", error=repr(task.exception()))

    async def _read_forever(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                if not self._ready.is_set():
                    await self._pubsub.subscribe(self._own)
                    self._ready.set()
                message = await self._pubsub.get_message(timeout=0.5)
                if message is not None:
                    self._dispatch(message)
            except (RedisError, OSError) as e:
                log.warning("pubsub_unavailable", error=str(e))
                await self._pause(stop)
            except Exception as e:  # never let the live feed die: log, pause, read on
                log.exception("pubsub_read_failed", error=repr(e))
                await self._pause(stop)

    async def _pause(self, stop: asyncio.Event) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), self.config.reconnect_s)

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind, channel = message["type"], _text(message["channel"])
        if kind == "message":
            user = self._inbox.user_of(channel)
            sub = self._subs.get(user) if user is not None else None
            if sub is not None:
                raw_id, _, stored = message["data"].partition(b" ")
                entry_id = raw_id.decode()
                for conn in list(sub.connections):
                    conn.deliver(entry_id, stored)
        elif kind == "subscribe":
            self._confirmed(channel)

    def _confirmed(self, channel: str) -> None:
        """A SUBSCRIBE took effect: ours, or redis-py's own after reconnecting (then the
        channel's sockets catch up on what was published while the connection was down)."""
        waiting = self._pending.get(channel)
        if waiting:
            future = waiting.popleft()
            if not waiting:
                del self._pending[channel]
            if not future.done():
                future.set_result(None)
            return
        user = self._inbox.user_of(channel)
        sub = self._subs.get(user) if user is not None else None
        for conn in list(sub.connections if sub else ()):
            conn.catch_up_again(self._inbox)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
