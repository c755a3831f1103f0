"""Pruning of old bookkeeping rows, against the real database."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from libs.runtime.housekeeping import prune


async def test_prune_removes_only_rows_older_than_the_retention(
    conn: psycopg.AsyncConnection[Any], database_url: str
) -> None:
    """Rows older than the retention go from each table; younger rows stay."""
    old, new = str(uuid.uuid4()), str(uuid.uuid4())
    for ident, age in ((old, "2 days"), (new, "1 hour")):
        await conn.execute(
            "INSERT INTO command_results (command_id, reply, recorded_at)"
            " VALUES (%s, 'null', now() - %s::interval)",
            (ident, age),
        )
        await conn.execute(
            "INSERT INTO idempotency_keys (principal, key, request_hash, created_at)"
            " VALUES ('p', %s, 'h', now() - %s::interval)",
            (ident, age),
        )
        await conn.execute(
            "INSERT INTO processed_events (consumer_group, event_id, processed_at)"
            " VALUES ('g', %s, now() - %s::interval)",
            (ident, age),
        )
        await conn.execute(
            "INSERT INTO projected_events (position, projected_at)"
            " VALUES (%s, now() - %s::interval)",
            (_no_event(ident), age),
        )
    async with AsyncConnectionPool(database_url, min_size=1, open=False) as pool:
        removed = await prune(pool, timedelta(days=1))
    assert all(count >= 1 for count in removed.values())
    for table, column in (
        ("command_results", "command_id"),
        ("idempotency_keys", "key"),
        ("processed_events", "event_id::text"),
    ):
        cur = await conn.execute(
            f"SELECT {column} FROM {table} WHERE {column} = ANY(%s)", ([old, new],)
        )
        assert [r[0] for r in await cur.fetchall()] == [new], table
    cur = await conn.execute(
        "SELECT position FROM projected_events WHERE position = ANY(%s)",
        ([_no_event(old), _no_event(new)],),
    )
    assert [r[0] for r in await cur.fetchall()] == [_no_event(new)]


def _no_event(ident: str) -> int:
    """A position no event has (they are positive), so no projector of another test sees it."""
    return -1 - uuid.UUID(ident).int % 2**62
