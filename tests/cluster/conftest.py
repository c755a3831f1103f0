"""A local Redis Cluster of three masters (`libs/local/cluster.py`) for the tests under
`tests/cluster/`, started once per pytest worker that runs them (they run in one lane,
`conftest.LANES`), and a client of it made as the services make theirs (`redis_client`).

Here `redis_url` is the cluster's, so every fixture built on it (the `redis` client, the
environments of service processes) is on the cluster: tests of other modules imported into a
module here run again on it, unchanged."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from libs.local.cluster import redis_cluster
from libs.runtime.redis_client import redis_client


@pytest.fixture(scope="session")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`redis+cluster://127.0.0.1:<port>/0` of a running three-master cluster."""
    with redis_cluster(tmp_path_factory.mktemp("redis-cluster")) as url:
        yield url


@pytest.fixture
async def cluster(cluster_url: str) -> AsyncIterator[Redis]:
    """The services' kind of client on the cluster (a `RedisCluster`, typed as `Redis`)."""
    client = redis_client(cluster_url)
    await client.initialize()  # as `open_resources` does: it knows the slots from the start
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def redis_url(cluster_url: str) -> str:
    return cluster_url


@pytest.fixture(scope="session")
def _sweep_run_keys() -> None:
    """Nothing to sweep: the cluster goes away with its data at the end of the session."""
