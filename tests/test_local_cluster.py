"""The local Redis Cluster the cluster tests run on (libs/local/cluster.py): three masters from
the `redis-server` binary, every slot served, and a cluster-aware client routes keys of every
slot while a multi-key command across slots is refused, as on ElastiCache in cluster mode."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException

from libs.local.cluster import redis_cluster

pytestmark = pytest.mark.process  # starts three redis-server processes


def test_three_masters_serve_every_slot_and_refuse_cross_slot_commands(tmp_path: Path) -> None:
    """Keys spread over all three masters; `MSET` of keys in two slots fails; sharing a hash
    tag makes it succeed."""
    with redis_cluster(tmp_path) as url:
        client = RedisCluster.from_url(url.replace("redis+cluster://", "redis://"))
        try:
            assert int(client.cluster_info()["cluster_slots_ok"]) == 16384
            masters = {client.get_node_from_key(f"k{i}").name for i in range(60)}
            assert len(masters) == 3
            for i in range(60):
                client.set(f"k{i}", i)
            assert [int(client.get(f"k{i}")) for i in range(60)] == list(range(60))
            with pytest.raises(RedisClusterException, match="same key slot"):
                client.execute_command("MSET", "a", "1", "b", "2")
            assert client.execute_command("MSET", "{t}a", "1", "{t}b", "2")
        finally:
            client.close()
