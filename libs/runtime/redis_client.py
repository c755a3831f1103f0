"""The one way every process makes its Redis client from `REDIS_URL`.

- `redis://host:port/db` (`rediss://` for TLS): one server (a primary, with or without replicas
  behind a failover endpoint). A `Redis` on a `BlockingConnectionPool`: a burst that needs more
  than `REDIS_CONNECTIONS` waits up to `REDIS_WAIT_S` for one rather than fail at once.
- `redis+cluster://host:port/0` (`rediss+cluster://` for TLS): a Redis Cluster (ElastiCache in
  cluster mode: its configuration endpoint). A `redis.asyncio.cluster.RedisCluster` that learns
  the nodes and slots from the node named, and routes each command to the master of its key's
  slot. At most `REDIS_CONNECTIONS` connections per node; one more in flight fails at once with
  `MaxConnectionsError` (the cluster client has no blocking pool). No node answering is a
  `ConnectionError`, as for one server.

Both pack commands with hiredis (`resp.py`). The cluster client is typed as `Redis`: it offers
the same commands, and every script, transaction and multi-key command of the system names keys
of one hash tag (docs/operations.md, "Redis Cluster"), which is what the cluster needs of them.
"""

from __future__ import annotations

from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException

from libs.runtime.resp import packing_in_c

REDIS_CONNECTIONS = 200
REDIS_WAIT_S = 5.0
# The URL schemes that name a cluster, and the scheme redis-py parses each as.
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
_OPTIONS: dict[str, Any] = {
    "socket_connect_timeout": 2,
    "socket_timeout": 10,
    "health_check_interval": 15,
}


def is_cluster_url(url: str) -> bool:
    return urlsplit(url).scheme in CLUSTER_SCHEMES


def plain_url(url: str) -> str:
    """The URL with its cluster scheme replaced by the one redis-py parses (`redis`, `rediss`)."""
    parts = urlsplit(url)
    scheme = CLUSTER_SCHEMES.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, *parts[1:]))


def redis_client(url: str) -> Redis:
    """The client for `url`: a cluster client for a cluster URL, else a single-server one."""
    if is_cluster_url(url):
        return cast(Redis, cluster_client(url))
    return Redis(connection_pool=redis_pool(url))


def redis_pool(url: str) -> BlockingConnectionPool:
    """A pool that makes a caller wait for a free connection (up to `REDIS_WAIT_S`) rather than
    fail at once when a burst of requests needs more than `REDIS_CONNECTIONS`."""
    pool = BlockingConnectionPool.from_url(
        url, max_connections=REDIS_CONNECTIONS, timeout=REDIS_WAIT_S, **_OPTIONS
    )
    pool.connection_class = packing_in_c(pool.connection_class)
    return pool


class _Cluster(RedisCluster):
    """`RedisCluster` whose failure to reach any node is a `ConnectionError`, as a single
    server's is: redis-py raises its own `RedisClusterException` (not a `RedisError`) when it
    finds no node to learn the slots from, which every handler of a Redis outage here (503s,
    runners, the rate limit's fallback, lease health) would let through."""

    async def initialize(
        self,
        additional_startup_nodes_info: list[tuple[str, int]] | None = None,
        last_failed_node_name: str | None = None,
    ) -> RedisCluster:
        try:
            return await super().initialize(additional_startup_nodes_info, last_failed_node_name)
        except RedisClusterException as e:
            raise RedisConnectionError(str(e)) from e


def cluster_client(url: str) -> RedisCluster:
    """A cluster client; the nodes it finds make their connections with hiredis's packer."""
    client = _Cluster.from_url(plain_url(url), max_connections=REDIS_CONNECTIONS, **_OPTIONS)
    # Every node the client discovers is made from these keyword arguments (the constructor
    # takes no connection class of the caller's): the startup node only answers CLUSTER SLOTS.
    kwargs = client.nodes_manager.connection_kwargs
    kwargs["connection_class"] = packing_in_c(kwargs["connection_class"])
    return client


def is_cluster(redis: object) -> bool:
    return isinstance(redis, RedisCluster)


def probe_connection(redis: Redis | RedisCluster) -> AbstractConnection:
    """A new connection made like `redis`'s own but outside its pool (a health check's): to the
    server, or to one node of a cluster (the default node, once the client knows the nodes)."""
    if isinstance(redis, RedisCluster):
        node = redis.get_default_node() or redis.startup_nodes[0]
        connection: AbstractConnection = node.connection_class(**node.connection_kwargs)
        return connection
    shared = redis.connection_pool
    made: AbstractConnection = shared.connection_class(**shared.connection_kwargs)
    return made
