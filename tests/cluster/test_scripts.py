"""Every Lua script, multi-key command and pipeline of the system, run through its own code on a
real three-master Redis Cluster: each script's keys hash to one slot (a script or multi-key
command naming keys of two slots is refused, by redis-py or by the node with CROSSSLOT, and the
test fails), and the pipelines whose commands span slots still run."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import cast

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from libs.events import deadletter
from libs.events.acks import Acks
from libs.events.lease import LeaseLost, fence
from libs.events.publish import Outcome, Publisher
from libs.events.retry import Failures, failures_key
from libs.events.streams import dead_letter_stream, events_stream
from libs.events.trim import remove_idle_consumers
from libs.inbox.inbox import Inbox, Message
from libs.readmodel.frames import BroadcastRemoved, Frame
from libs.runtime.redis_client import is_cluster
from services.gateway.ratelimit import SharedLimiter
from services.timer.store import TimerStore

pytestmark = pytest.mark.process  # the cluster's three redis-server processes


def _nodes(client: Redis) -> RedisCluster:
    """The cluster client behind the services' `Redis` type."""
    assert is_cluster(client)
    return cast(RedisCluster, client)


def _node_of(client: RedisCluster, key: str) -> str:
    node = client.get_node_from_key(key)
    assert node is not None
    return str(node.name)


def _frame(n: int) -> Frame:
    removed = BroadcastRemoved(broadcast_id=f"b{n}", reason="cancelled")
    return Frame("broadcast_removed", "2026-12-01T00:00:00.000Z", removed)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def test_inbox_delivery_spans_every_master_once_and_is_fenced(
    cluster: Redis, prefix: str
) -> None:
    """A message to 300 users (inboxes on all three masters) is one call per shard, each of one
    slot; it reaches every inbox once (a redelivery adds nothing); after a newer token fenced
    every shard, the old token writes nothing anywhere; once the masters forgot the script it is
    loaded again; the nodes' connections pack commands with hiredis."""
    nodes = _nodes(cluster)
    inbox = Inbox(cluster, prefix)
    users = [f"transporter:t{i}" for i in range(300)]
    assert len({_node_of(nodes, inbox.stream(u)) for u in users}) == 3
    await inbox.warm()
    await inbox.fence(5)
    messages = [Message(u, _frame(1)) for u in users]
    assert await inbox.deliver("event-1", messages, token=5) == 300
    assert await inbox.deliver("event-1", messages, token=5) == 0
    assert {await cluster.xlen(inbox.stream(u)) for u in users} == {1}
    await inbox.fence(6)
    with pytest.raises(LeaseLost):
        await inbox.deliver("event-2", [Message(u, _frame(2)) for u in users], token=5)
    assert {await cluster.xlen(inbox.stream(u)) for u in users} == {1}
    assert await inbox.deliver("event-2", [Message(users[0], _frame(2))], token=6) == 1
    await cluster.script_flush()  # every master forgets the script: the next call loads it
    assert await inbox.deliver("event-3", [Message(u, _frame(3)) for u in users], token=6) == 300
    packed = {n.connection_class.__name__ for n in nodes.get_nodes()}
    assert packed == {"HiredisPackedConnection"}  # hiredis packs the commands, as on one server


async def test_a_wake_published_on_one_master_reaches_a_subscriber_on_another(
    cluster: Redis, prefix: str
) -> None:
    """The delivery script's PUBLISH (on the master of the user's inbox shard) reaches a
    gateway's pub/sub connection on another master, as the hub's `ClusterPubSub` is."""
    nodes = _nodes(cluster)
    inbox = Inbox(cluster, prefix)
    user = "customer:c1"
    home = _node_of(nodes, inbox.stream(user))
    other = next(n for n in nodes.get_primaries() if n.name != home)
    pubsub = nodes.pubsub(node=other)
    try:
        await pubsub.subscribe(inbox.channel(user))
        assert (await pubsub.get_message(timeout=5))["type"] == "subscribe"
        await inbox.deliver("event-1", [Message(user, _frame(1))])
        got = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
        assert got is not None
        assert inbox.user_of(got["channel"].decode()) == user
        (entry,) = await inbox.after(user, (0, 0), 10)
        assert got["data"].split(b" ", 1)[0].decode() == entry[0]
    finally:
        await pubsub.aclose()


async def test_the_relay_publishes_to_streams_of_one_slot(cluster: Redis, prefix: str) -> None:
    """The relay's epoch and publish scripts (fence, epoch, count and every category's stream,
    all `{bus}`) run, and an older lease token is refused."""
    publisher = Publisher(cluster, prefix)
    assert await publisher.start_epoch(3, "epoch-1")
    now = datetime.now(UTC)
    rows = [
        (1, "broadcast-b1", "e1", 1, now, None, json.dumps({"type": "x"})),
        (2, "driver-d1", "e2", 1, now, None, json.dumps({"type": "y"})),
    ]
    assert await publisher.publish(3, "epoch-1", 0, 1, rows) == (Outcome.PUBLISHED, 1)
    assert (await publisher.state()).published == 1
    assert await cluster.xlen(events_stream(prefix, "broadcast")) == 1
    assert await cluster.xlen(events_stream(prefix, "driver")) == 1
    assert (await publisher.publish(2, "epoch-1", 1, 2, rows))[0] == Outcome.FENCED


async def test_timer_scripts_and_pipelines_run(cluster: Redis, prefix: str) -> None:
    """The timers' schedule and claim scripts (`{timers}`) and their pipelines run: a claim
    moves the due timers into the in-flight set, and forgetting them empties both."""
    store = TimerStore(cluster, prefix)
    await store.mark_rebuilt()
    assert await store.schedule([("b1", 1000), ("b2", 2000), ("b3", 10**13)]) == 3
    assert await store.holds("b1")
    await store.claim(5000, 1000, 10)
    inflight = await cluster.zrange(store.inflight, 0, -1)
    assert sorted(_text(cast(bytes, m)) for m in inflight) == ["b1", "b2"]
    await store.forget(["b1", "b2"])
    assert await store.members() == ["b3"]


async def test_stream_bookkeeping_runs(cluster: Redis, prefix: str) -> None:
    """Retry records, acknowledgements, dead-lettering (a pipeline across two slots), idle
    consumer removal and the lease fence each run on the cluster."""
    stream = events_stream(prefix, "broadcast")
    entry = _text(await cluster.xadd(stream, {"e": "1"}))
    await cluster.xgroup_create(stream, "g", id="0")
    await cluster.xreadgroup("g", "c", {stream: ">"}, count=10)
    failures = Failures(cluster, stream, "g")
    assert await failures.record(entry, 1, "boom") > 0
    acks = Acks(cluster, stream, "g", failures_key(stream, "g"))
    acks.add(entry, 2)
    await acks.flush()
    assert acks.acknowledged == 1
    assert await failures.entries() == []
    second = _text(await cluster.xadd(stream, {"e": "2"}))
    await cluster.xreadgroup("g", "c", {stream: ">"}, count=10)
    written = {b"stream": stream, b"group": "g", b"entryId": second, b"error": "x"}
    letters = dead_letter_stream(prefix)
    await deadletter.send(
        cluster, letters, written, failures_key=failures_key(stream, "g"), maxlen=100
    )
    assert await cluster.xlen(letters) == 1
    await cluster.xgroup_createconsumer(stream, "g", "idle")
    assert ("g", "idle") in await remove_idle_consumers(cluster, stream, 0)
    assert await fence(cluster, f"{prefix}fence:some-role", 2)
    assert not await fence(cluster, f"{prefix}fence:some-role", 1)


async def test_the_shared_rate_limit_runs(cluster: Redis, prefix: str) -> None:
    """The gateway's rate limit script (one key) counts on the cluster."""
    limiter = SharedLimiter(cluster, f"{prefix}rate:", per_minute=2)
    assert await limiter.take("ip-1") == 0
    assert await limiter.take("ip-1") == 0
    assert await limiter.take("ip-1") > 0
