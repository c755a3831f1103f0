"""Cancel and claims decide "over by timeout" with `timed_out` in Python, the timer's expiry with
its SQL twin `PAST_EXPIRY`: the two must say the same of every state and moment."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from libs.readmodel.broadcasts import PAST_EXPIRY, LockedBroadcast, past_expiry, timed_out
from libs.readmodel.states import ENDED, OPEN

NOW = datetime(2026, 11, 24, 10, 0, 0, 123000, tzinfo=UTC)
MOMENTS = [NOW + timedelta(milliseconds=ms) for ms in (-1000, -1, 0, 1, 1000)]


async def _in_sql(conn: psycopg.AsyncConnection[Any], state: str, expires_at: datetime) -> bool:
    cur = await conn.execute(
        f"SELECT {PAST_EXPIRY} FROM (VALUES (%(state)s::text, %(at)s::timestamptz))"
        " AS b(state, expires_at)",
        {"state": state, "at": expires_at, "active": list(OPEN), "now": NOW},
    )
    row = await cur.fetchone()
    assert row is not None
    return bool(row[0])


async def test_the_sql_rule_agrees_with_the_python_rule(
    conn: psycopg.AsyncConnection[Any],
) -> None:
    """For every state and an expiry before, at and after now, PostgreSQL's `PAST_EXPIRY` and
    `past_expiry` agree, and `timed_out` is that or `expired`."""
    for state in (*OPEN, *ENDED):
        for expires_at in MOMENTS:
            row = LockedBroadcast("b", "c", state, 2, expires_at)
            assert await _in_sql(conn, state, expires_at) == past_expiry(row, NOW), (
                state,
                expires_at,
            )
            assert timed_out(row, NOW) == (state == "expired" or past_expiry(row, NOW))
    assert past_expiry(LockedBroadcast("b", "c", "broadcasting", 2, NOW), NOW)
