"""Deleting the Redis keys a test run's service processes left behind."""

from __future__ import annotations

import redis


def forget_keys(redis_url: str, prefix: str) -> None:
    """Delete every key starting with `prefix`, so it does not outlive the run on a shared
    server."""
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
    finally:
        client.close()
