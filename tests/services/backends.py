"""Cutting a service's processes off PostgreSQL: `pg_terminate_backend` of their connections, as
an administrator (or a failover) does."""

from __future__ import annotations

import asyncio
import time

import psycopg

_TERMINATE = (
    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    " AND starts_with(application_name, %s)"
)


async def terminate_backends(database_url: str, service: str) -> int:
    """Terminate every connection to this database of `service`'s processes (their
    `application_name` is `weelo-<service>-<pid>`); how many were terminated."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        cur = await conn.execute(_TERMINATE, (f"weelo-{service}-",))
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def keep_terminating(
    database_url: str, service: str, seconds: float, every: float = 0.1
) -> int:
    """Terminate `service`'s connections every `every` seconds for `seconds`, so that whatever
    the service does meanwhile meets a connection that was killed; how many were terminated."""
    deadline = time.monotonic() + seconds
    killed = 0
    while time.monotonic() < deadline:
        killed += await terminate_backends(database_url, service)
        await asyncio.sleep(every)
    return killed
