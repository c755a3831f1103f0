"""The `idempotency_keys` rows: claim a key, store its response, or release it after a 5xx.

A claim is the row's `created_at`: saving and releasing only touch the row of that claim, so a
request whose key was taken over (it looked abandoned) cannot undo its successor's claim.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from services.gateway.errors import ApiError

Conn = psycopg.AsyncConnection[Any]
Row = tuple[str, int | None, bytes | None, bool]

_IN_FLIGHT = (409, "request_in_flight", "A request with this key is still running")
_REUSED = (422, "idempotency_key_reused", "This Idempotency-Key was used for another request")


@dataclass(frozen=True)
class KeyUse:
    caller: str
    key: str
    digest: str
    stale_s: float


@dataclass(frozen=True)
class Claimed:
    at: datetime


@dataclass(frozen=True)
class Stored:
    status: int
    body: bytes


async def claim(conn: Conn, use: KeyUse) -> Claimed | Stored:
    """Claim the key for this request, or the stored response to replay; 409/422 otherwise."""
    for _ in range(3):  # a row released between our insert and our read: try again
        claimed = await _insert(conn, use)
        if claimed is not None:
            return claimed
        row = await _existing(conn, use)
        if row is not None:
            return await _decide(conn, use, row)
    raise ApiError(*_IN_FLIGHT)


async def _decide(conn: Conn, use: KeyUse, row: Row) -> Claimed | Stored:
    stored_hash, status, body, stale = row
    if stored_hash != use.digest:
        raise ApiError(*_REUSED)
    if status is not None:
        return Stored(status, body or b"")
    taken = await _take_over(conn, use) if stale else None
    if taken is None:
        raise ApiError(*_IN_FLIGHT)
    return taken


async def _insert(conn: Conn, use: KeyUse) -> Claimed | None:
    cur = await conn.execute(
        "INSERT INTO idempotency_keys (principal, key, request_hash) VALUES (%s, %s, %s)"
        " ON CONFLICT (principal, key) DO NOTHING RETURNING created_at",
        (use.caller, use.key, use.digest),
    )
    row = await cur.fetchone()
    return Claimed(row[0]) if row else None


async def _existing(conn: Conn, use: KeyUse) -> Row | None:
    cur = await conn.execute(
        "SELECT request_hash, response_status, response_body,"
        " created_at < now() - make_interval(secs => %s)"
        " FROM idempotency_keys WHERE principal = %s AND key = %s",
        (use.stale_s, use.caller, use.key),
    )
    return await cur.fetchone()


async def _take_over(conn: Conn, use: KeyUse) -> Claimed | None:
    """Claim an abandoned in-flight row; only one of several retries wins it."""
    cur = await conn.execute(
        "UPDATE idempotency_keys SET created_at = clock_timestamp()"
        " WHERE principal = %s AND key = %s AND response_status IS NULL"
        " AND created_at < now() - make_interval(secs => %s) RETURNING created_at",
        (use.caller, use.key, use.stale_s),
    )
    row = await cur.fetchone()
    return Claimed(row[0]) if row else None


async def save(conn: Conn, use: KeyUse, claimed: Claimed, stored: Stored) -> None:
    await conn.execute(
        "UPDATE idempotency_keys SET response_status = %s, response_body = %s"
        " WHERE principal = %s AND key = %s AND created_at = %s",
        (stored.status, stored.body, use.caller, use.key, claimed.at),
    )


async def release(conn: Conn, use: KeyUse, claimed: Claimed) -> None:
    await conn.execute(
        "DELETE FROM idempotency_keys WHERE principal = %s AND key = %s"
        " AND created_at = %s AND response_status IS NULL",
        (use.caller, use.key, claimed.at),
    )
