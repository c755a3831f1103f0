"""A Redis Cluster that stops answering looks to the services as one server that stopped: every
command fails with redis-py's `ConnectionError` (a `RedisError`), which their handlers take for
Redis being unavailable (a 503, a runner that waits and reads again, a lease given up), not with
the cluster client's own `RedisClusterException`, which none of them expects."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from libs.local.cluster import redis_cluster
from libs.runtime.redis_client import redis_client

pytestmark = pytest.mark.process  # a cluster of its own, stopped under the client


async def test_a_cluster_that_stopped_fails_commands_with_a_connection_error(
    tmp_path: Path,
) -> None:
    """Once every node has stopped, a command, a pipeline and a script call of a client that
    knew the cluster each raise `ConnectionError`."""
    with redis_cluster(tmp_path) as url:
        client = redis_client(url)
        await client.initialize()
        assert await client.set("k", 1)
    try:
        with pytest.raises(RedisConnectionError):
            await client.get("k")
        with pytest.raises(RedisConnectionError):
            async with client.pipeline(transaction=False) as pipe:
                pipe.get("a")
                pipe.get("b")
                await pipe.execute()
        with pytest.raises(RedisConnectionError):
            await client.register_script("return 1")(keys=["k"])
    finally:
        await client.aclose()
