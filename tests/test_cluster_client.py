"""`REDIS_URL` to client (`libs/runtime/redis_client.py`): a cluster scheme gives a
`RedisCluster` of the URL's node, credentials and TLS; any other URL the single-server client;
both pack commands with hiredis. No server is needed: neither client connects when made."""

from __future__ import annotations

from typing import cast

import pytest
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection, SSLConnection
from redis.exceptions import RedisClusterException

from libs.runtime.redis_client import (
    REDIS_CONNECTIONS,
    is_cluster,
    is_cluster_url,
    plain_url,
    redis_client,
)

pytestmark = pytest.mark.pure


def test_a_cluster_url_gives_a_cluster_client_of_its_node() -> None:
    """`redis+cluster://` is a cluster client starting from the URL's node, at most
    `REDIS_CONNECTIONS` connections per node, commands packed by hiredis."""
    client = redis_client("redis+cluster://10.0.0.5:7000/0")
    assert is_cluster(client)
    cluster = cast(RedisCluster, client)
    assert [(n.host, n.port) for n in cluster.startup_nodes] == [("10.0.0.5", 7000)]
    kwargs = cluster.nodes_manager.connection_kwargs
    assert kwargs["max_connections"] == REDIS_CONNECTIONS
    made = kwargs["connection_class"]
    assert issubclass(made, Connection) and not issubclass(made, SSLConnection)
    assert made.__name__ == "HiredisPackedConnection"


def test_a_tls_cluster_url_keeps_its_token_and_tls() -> None:
    """`rediss+cluster://:TOKEN@host` (ElastiCache in cluster mode) connects with TLS and AUTH."""
    cluster = cast(RedisCluster, redis_client("rediss+cluster://:s3cret@cfg.example:6379/0"))
    kwargs = cluster.nodes_manager.connection_kwargs
    assert issubclass(kwargs["connection_class"], SSLConnection)
    assert kwargs["connection_class"].__name__ == "HiredisPackedSSLConnection"
    assert kwargs["password"] == "s3cret"


def test_a_cluster_url_with_another_database_is_refused() -> None:
    """A cluster has database 0 only: another number is an error when the client is made."""
    with pytest.raises(RedisClusterException, match="db"):
        redis_client("redis+cluster://127.0.0.1:7000/2")


def test_any_other_url_gives_the_single_server_client() -> None:
    """`redis://` and `rediss://` stay one server on a blocking pool, packed by hiredis."""
    for url in ("redis://127.0.0.1:6379/3", "rediss://:t@primary.example:6379/0"):
        assert not is_cluster_url(url)
        client = redis_client(url)
        assert isinstance(client, Redis) and not is_cluster(client)
        pool = client.connection_pool
        assert isinstance(pool, BlockingConnectionPool)
        assert pool.connection_class.__name__.startswith("HiredisPacked")


def test_plain_url_only_changes_a_cluster_scheme() -> None:
    """The cluster schemes read as redis-py's own; everything after the scheme is kept."""
    assert plain_url("rediss+cluster://:t@h:6379/0?ssl_cert_reqs=none") == (
        "rediss://:t@h:6379/0?ssl_cert_reqs=none"
    )
    assert plain_url("redis://h:6379/0") == "redis://h:6379/0"
