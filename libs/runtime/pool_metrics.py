"""The PostgreSQL pool's use on `/metrics`, read from the pool's own counters at scrape time
(no I/O): connections open, idle and in use, requests waiting for one, and the configured
maximum (`DB_POOL_SIZE` less the connections the process's roles open for themselves)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import REGISTRY, GaugeMetricFamily
from prometheus_client.registry import Collector
from psycopg_pool import AsyncConnectionPool


class PoolCollector(Collector):
    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self._pool = pool

    def collect(self) -> Iterator[GaugeMetricFamily]:
        stats = self._pool.get_stats()
        size, idle = stats.get("pool_size", 0), stats.get("pool_available", 0)
        figures = {
            "weelo_db_pool_max": ("Most connections the pool may open", self._pool.max_size),
            "weelo_db_pool_open": ("Connections the pool holds open", size),
            "weelo_db_pool_in_use": ("Connections lent out now", size - idle),
            "weelo_db_pool_waiting": (
                "Requests waiting for a connection",
                stats.get("requests_waiting", 0),
            ),
        }
        for name, (text, value) in figures.items():
            yield GaugeMetricFamily(name, text, value=value)


def watch_pool(pool: AsyncConnectionPool[Any]) -> None:
    """Report `pool` on this process's `/metrics` (one pool per process)."""
    REGISTRY.register(PoolCollector(pool))
