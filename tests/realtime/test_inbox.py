"""Inboxes on a real Redis, and one connection's ordering, dedupe and overflow (its socket is a
recording stand-in: the unit under test is our own `Connection`)."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any, cast

from redis.asyncio import Redis
from starlette.websockets import WebSocket

from libs.inbox.inbox import Inbox, InboxConfig, Message, parse_id
from libs.readmodel.frames import Frame, StateChanged
from libs.runtime.redis_client import redis_pool
from services.gateway.realtime.connection import LAGGING_CLOSE, Connection
from tests.events.helpers import eventually


class Recorder:
    """Stands in for a socket: records what is sent; `stuck` makes sends never finish."""

    def __init__(self, stuck: bool = False) -> None:
        self.texts: list[str] = []
        self.closed_with: int | None = None
        self._stuck = asyncio.Event() if stuck else None

    async def send_text(self, text: str) -> None:
        if self._stuck is not None:
            await self._stuck.wait()
        self.texts.append(text)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed_with = code


def message(user: str, n: int) -> Message:
    data = StateChanged(
        broadcast_id=f"b{n}",
        state="created",
        previous_state=None,
        end_reason=None,
        expires_at="2026-11-24T10:00:00.123Z",
        filled=0,
        total=1,
    )
    return Message(user, Frame("broadcast_state_changed", "2026-11-24T10:00:00.123Z", data))


def connection(recorder: Recorder, user: str, max_pending: int = 256) -> Connection:
    return Connection(cast(WebSocket, recorder), user, max_pending)


def sent_ids(recorder: Recorder) -> list[str]:
    return [json.loads(t)["eventId"] for t in recorder.texts]


async def test_an_event_is_delivered_once(redis: Redis, prefix: str) -> None:
    """A redelivered event adds nothing to the inbox and publishes nothing again."""
    inbox = Inbox(redis, prefix)
    pubsub = redis.pubsub()
    await pubsub.subscribe(inbox.channel("customer:c1"))
    assert await inbox.deliver("e1", [message("customer:c1", 1), message("customer:c1", 2)]) == 1
    assert await inbox.deliver("e1", [message("customer:c1", 1), message("customer:c1", 2)]) == 0
    entries = await inbox.after("customer:c1", (0, 0), 10)
    assert [json.loads(f)["data"]["broadcastId"] for _, f in entries] == ["b1", "b2"]
    published: list[Any] = []
    deadline = asyncio.get_running_loop().time() + 0.5
    while asyncio.get_running_loop().time() < deadline:
        got = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if got is not None:
            published.append(got["data"])
    assert [p.split(b" ", 1)[0].decode() for p in published] == [i for i, _ in entries]
    await pubsub.aclose()


async def test_catch_up_then_live_without_duplicates(redis: Redis, prefix: str) -> None:
    """Live frames that arrive while a connection replays are sent after the replay, in id
    order, and those the replay already sent are not sent again."""
    inbox, user = Inbox(redis, prefix), "transporter:t1"
    for n in range(5):
        await inbox.deliver(f"e{n}", [message(user, n)])
    entries = await inbox.after(user, (0, 0), 10)
    recorder = Recorder()
    conn = connection(recorder, user)
    conn.deliver(*entries[3])  # published while replaying: also in the replay
    conn.deliver(*entries[4])
    await conn.catch_up_soon(inbox, parse_id(entries[0][0]), check_gap=True)
    await conn.drained()
    assert sent_ids(recorder) == [i for i, _ in entries[1:]]
    conn.deliver(*entries[2])  # an old one again
    await inbox.deliver("e9", [message(user, 9)])
    newest = (await inbox.after(user, parse_id(entries[4][0]), 1))[0]
    conn.deliver(*newest)
    await conn.drained()
    assert sent_ids(recorder) == [i for i, _ in entries[1:]] + [newest[0]]


async def test_gap_requires_resync(redis: Redis, prefix: str) -> None:
    """A starting id older than the inbox's oldest entry gets resync_required, then live frames."""
    inbox, user = Inbox(redis, prefix), "driver:d1"
    await inbox.deliver("e1", [message(user, 1)])
    recorder = Recorder()
    conn = connection(recorder, user)
    await conn.catch_up_soon(inbox, (1, 0), check_gap=True)
    await conn.drained()
    assert recorder.texts == ['{"type":"resync_required"}']


async def test_lagging_connection_is_dropped(redis: Redis, prefix: str) -> None:
    """A connection whose socket takes nothing is closed with 4008 once its buffer is full,
    and buffers nothing more."""
    inbox, user = Inbox(redis, prefix), "customer:c9"
    recorder = Recorder(stuck=True)
    conn = connection(recorder, user, max_pending=3)
    await conn.catch_up_soon(inbox, (0, 0), check_gap=False)
    for n in range(6):
        await inbox.deliver(f"e{n}", [message(user, n)])
    for entry_id, frame in await inbox.after(user, (0, 0), 10):
        conn.deliver(entry_id, frame)

    async def closed() -> bool:
        return recorder.closed_with == LAGGING_CLOSE

    await eventually(closed, timeout=2)
    assert conn.closed


async def test_the_live_feed_back_before_the_first_catch_up_replays_nothing_old(
    redis: Redis, prefix: str
) -> None:
    """The hub's pub/sub connection comes back (Redis restarted) while a socket that resumes
    from lastEventId has not started its catch-up: the catch-up still starts from the client's
    id, so messages it already had are not sent again."""
    inbox, user = Inbox(redis, prefix), "driver:d2"
    for n in range(3):
        await inbox.deliver(f"e{n}", [message(user, n)])
    entries = await inbox.after(user, (0, 0), 10)
    recorder = Recorder()
    conn = connection(recorder, user)
    conn.catch_up_again(inbox)  # the hub, on a resubscription, before the endpoint's catch-up
    await conn.catch_up_soon(inbox, parse_id(entries[1][0]), check_gap=True)
    await conn.drained()
    assert sent_ids(recorder) == [entries[2][0]]


async def test_after_a_resync_the_live_feed_coming_back_sends_nothing_old(
    redis: Redis, prefix: str
) -> None:
    """A socket told to resync goes live from the inbox's newest entry: when the live feed
    comes back and the hub catches it up, the inbox's older messages are not sent."""
    inbox, user = Inbox(redis, prefix), "driver:d3"
    for n in range(3):
        await inbox.deliver(f"e{n}", [message(user, n)])
    recorder = Recorder()
    conn = connection(recorder, user)
    await conn.catch_up_soon(inbox, (99999999999999, 0), check_gap=True)
    await conn.drained()
    await conn.catch_up_soon(inbox, conn.last_id, check_gap=conn.last_id != (0, 0))  # the hub's
    await conn.drained()
    assert recorder.texts == ['{"type":"resync_required"}']


async def test_a_warmed_inbox_holds_a_connection_per_call_in_flight(
    redis_url: str, prefix: str
) -> None:
    """`Inbox.warm` (the projector runs it when it takes the lease) opens as many Redis
    connections as calls may be in flight at once, so the first burst of events does not wait
    while they are opened one by one; a client nobody warmed holds none."""
    pool = redis_pool(redis_url)
    name = f"warm-{uuid.uuid4().hex[:8]}"
    pool.connection_kwargs["client_name"] = name  # to count its connections in CLIENT LIST
    client, observer = Redis(connection_pool=pool), Redis.from_url(redis_url)

    async def held() -> int:
        return sum(c.get("name") == name for c in await observer.client_list())

    try:
        assert await held() == 0
        await Inbox(client, prefix).warm()
        assert await held() >= InboxConfig().concurrency
    finally:
        await client.aclose()
        await observer.aclose()


async def test_a_redelivery_writes_only_in_the_shards_it_had_not_reached(
    redis: Redis, prefix: str
) -> None:
    """An event's recipients fall in several inbox shards, one mark each: when one shard's call
    is undone (its mark and inboxes gone, as if that call never ran), delivering the event again
    writes that shard's inboxes alone, and every inbox then holds the message once."""
    inbox = Inbox(redis, prefix)
    users = [f"transporter:t{i}" for i in range(40)]
    messages = [message(u, 1) for u in users]
    assert await inbox.deliver("e1", messages) == 40
    shard = inbox.shard(users[0])
    undone = [u for u in users if inbox.shard(u) == shard]
    assert 0 < len(undone) < len(users)
    await redis.delete(inbox.mark("e1", "", 0, shard), *(inbox.stream(u) for u in undone))
    assert await inbox.deliver("e1", messages) == len(undone)
    assert {await redis.xlen(inbox.stream(u)) for u in users} == {1}


def test_a_wake_channel_names_its_user_and_shard() -> None:
    """Each user's wake channel carries the hash tag of the user's inbox shard, and the hub
    reads the user back from it; a channel of another prefix or kind names nobody."""
    inbox = Inbox(cast(Redis, None), "p:")
    for user in ("customer:c1", "transporter:t-9", "driver:{odd}"):
        channel = inbox.channel(user)
        assert channel.startswith(f"p:{{inbox:{inbox.shard(user)}}}:")
        assert inbox.stream(user).startswith(f"p:{{inbox:{inbox.shard(user)}}}:")
        assert inbox.user_of(channel) == user
    assert inbox.user_of("q:{inbox:1}:wake:customer:c1") is None
    assert inbox.user_of("p:wake-hub:gateway-1") is None
    assert inbox.user_of("p:{bus}:losses") is None


class _Counting(Redis):
    """A real client that notes each command it sends outside a pipeline, and each pipeline."""

    def __init__(self, url: str) -> None:
        super().__init__(connection_pool=redis_pool(url))
        self.sent: list[str] = []

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        self.sent.append(str(args[0]))
        return await super().execute_command(*args, **options)

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        self.sent.append("pipeline")
        return super().pipeline(transaction, shard_hint)


async def test_a_message_to_200_users_of_every_shard_is_one_call_on_one_server(
    redis: Redis, redis_url: str, prefix: str
) -> None:
    """On one server the groups of all shards go in one script call (up to `users_per_call`
    recipients), not one call per shard: a claim's message to 200 transporters is one EVALSHA."""
    client = _Counting(redis_url)
    try:
        inbox = Inbox(client, prefix)
        users = [f"transporter:t{i}" for i in range(200)]
        assert len({inbox.shard(u) for u in users}) == InboxConfig().shards
        await inbox.warm()
        client.sent.clear()
        assert await inbox.deliver("e1", [message(u, 1) for u in users]) == 200
        assert client.sent == ["EVALSHA"]
        assert {await redis.xlen(inbox.stream(u)) for u in users} == {1}
    finally:
        await client.aclose()
