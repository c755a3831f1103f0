"""The process-level flows on a Redis Cluster: two gateways, the broadcast, acceptance, timer
and presence services and two fan-outs (`tests/realtime/conftest.py`'s system) with `REDIS_URL`
naming the local three-master cluster. The tests are those of `tests/realtime/`, imported
unchanged: a search accepted and assigned with live sockets receiving their frames, a search
that expires by its timer, an open driver socket as a presence heartbeat, a frozen projector
replaced with its fence holding; plus an idempotent retry of a command through the gateway."""

from __future__ import annotations

import json
from typing import cast

import httpx
import pytest
from redis.asyncio.cluster import RedisCluster

from libs.runtime.redis_client import redis_client
from tests.processes import run_weelo
from tests.realtime import actions as act
from tests.realtime import expect as e
from tests.realtime.actions import DROP, PICKUP, vehicle_type
from tests.realtime.conftest import System, api, database_url, new_id, ok, system
from tests.realtime.sockets import brief
from tests.realtime.test_presence import test_open_driver_socket_is_a_heartbeat
from tests.realtime.test_projector_lease import (
    test_a_delivery_with_an_older_token_writes_nothing,
    test_a_frozen_projector_is_replaced_within_10_s_and_writes_nothing_once_awake,
)
from tests.realtime.test_story import test_search_accept_assign_cancel, test_search_that_expires

__all__ = [  # what pytest runs and uses from the modules above
    "api",
    "database_url",
    "system",
    "test_a_delivery_with_an_older_token_writes_nothing",
    "test_a_frozen_projector_is_replaced_within_10_s_and_writes_nothing_once_awake",
    "test_open_driver_socket_is_a_heartbeat",
    "test_search_accept_assign_cancel",
    "test_search_that_expires",
]


@pytest.fixture(scope="module")
def settings() -> dict[str, str]:
    """`test_story`'s broadcast timeout (its expiry waits for it) and `test_presence`'s TTL."""
    return {"BROADCAST_TIMEOUT_SECONDS": "6", "PRESENCE_TTL_SECONDS": "2"}


async def test_a_retried_search_with_its_idempotency_key_replays_the_first_answer(
    api: httpx.AsyncClient, system: System
) -> None:
    """The same search sent twice with one `Idempotency-Key` creates one broadcast: the retry,
    through the other gateway, gets 200 with the same broadcast, marked replayed (CONTRACT.md
    section 4)."""
    body = {
        "pickup": PICKUP,
        "drop": DROP,
        "trucks": [{"vehicleType": vehicle_type(), "quantity": 1}],
    }
    headers = {**system.auth("customer", new_id("c")), "Idempotency-Key": new_id("k")}
    first = await api.post(f"{system.url(0)}/v1/broadcasts", json=body, headers=headers)
    created = ok(first, 201)
    again = await api.post(f"{system.url(1)}/v1/broadcasts", json=body, headers=headers)
    assert again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["broadcastId"] == created["broadcastId"]


async def test_the_services_keep_their_keys_on_every_master(system: System) -> None:
    """The services of this module run on the cluster (a cluster `REDIS_URL`), and what they
    wrote (event streams, inbox shards, timers) lies on more than one of its masters."""
    url, prefix = system.env["REDIS_URL"], system.env["REDIS_KEY_PREFIX"]
    assert url.startswith("redis+cluster://")
    client = cast(RedisCluster, redis_client(url))
    try:
        await client.initialize()
        holding = [
            node.name
            for node in client.get_primaries()
            if await client.keys(f"{prefix}*", target_nodes=node)
        ]
    finally:
        await client.aclose()
    assert len(holding) >= 2


def test_weelo_ops_lag_reads_the_cluster(system: System) -> None:
    """`weelo ops lag --json` with the services' cluster `REDIS_URL` reports every group of the
    event streams the services read (the ops commands make their client like the services)."""
    done = run_weelo(system.env, "ops", "lag", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    groups = {(g["stream"].rsplit(":", 1)[-1], g["group"]) for g in report["groups"]}
    assert ("broadcast", "projector") in groups


async def test_gateways_hear_their_users_again_after_their_pubsub_connections_are_cut(
    api: httpx.AsyncClient, system: System
) -> None:
    """Every pub/sub connection on every master is cut (`CLIENT KILL TYPE pubsub`): the
    gateways' hubs connect and subscribe again, and a transporter's socket on one gateway gets
    the status change of its driver made through the other."""
    transporter = new_id("t")
    driver_id = await act.driver(api, system, transporter)
    watcher = await system.connect("transporter", transporter, 0)
    client = cast(RedisCluster, redis_client(system.env["REDIS_URL"]))
    try:
        await client.initialize()
        for node in client.get_primaries():
            await client.execute_command("CLIENT KILL", "TYPE", "pubsub", target_nodes=node)
    finally:
        await client.aclose()
    reply = await act.availability(api, system, driver_id, True, gateway=1)
    frames = await watcher.count(1, timeout=10)
    assert brief(frames[:1]) == [e.driver_status(driver_id, True, reply["at"])]
    await watcher.close()
