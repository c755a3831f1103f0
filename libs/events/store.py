"""The PostgreSQL event store: append with an expected version, read a stream, dedupe consumers.

`append` runs inside the caller's transaction, so read models updated in the same transaction
commit or roll back with the events. Every appended event is also put in the outbox; the relay
publishes it to Redis after the commit.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import errors

from libs.events.catalogue import DomainEvent, Envelope
from libs.events.codec import decode_event, encode
from libs.events.outbox import WAKE_LOCK

OUTBOX_CHANNEL = "weelo_outbox"
# Notify the relay at commit only while it sleeps (it holds `WAKE_LOCK`); else hold the lock
# shared until commit, so that the relay cannot fall asleep before it sees this commit.
_WAKE = (
    f"CASE WHEN pg_try_advisory_xact_lock_shared({WAKE_LOCK}) THEN NULL"
    f" ELSE pg_notify('{OUTBOX_CHANNEL}', '') END"
)

_APPEND = f"""
WITH new AS (
    INSERT INTO events (stream_id, version, event_id, event_type, data, correlation_id)
    SELECT x.s, x.v, x.id, x.t, x.d::jsonb, %(corr)s
    FROM unnest(%(streams)b::text[], %(versions)b::int[], %(ids)b::uuid[], %(types)b::text[],
                %(data)b::text[]) WITH ORDINALITY AS x(s, v, id, t, d, n)
    ORDER BY x.n
    RETURNING position, event_id, recorded_at
), queued AS (
    INSERT INTO outbox (position) SELECT position FROM new
)
SELECT position, event_id, recorded_at, {_WAKE} FROM new
"""  # noqa: S608 (our own constant, never input)

# The arrays go in binary: psycopg quotes each element of a text-format array with a regular
# expression, which costs more than the insert itself for a batch of thousands (a timer's expiry).
Batch = tuple[str, int, Sequence[DomainEvent]]


class ConcurrencyConflict(Exception):
    """Another writer appended to the stream after the version this writer read."""

    def __init__(self, stream_id: str, expected_version: int) -> None:
        super().__init__(f"stream {stream_id} moved past version {expected_version}")
        self.stream_id = stream_id
        self.expected_version = expected_version


def event_type(event: DomainEvent) -> str:
    return type(event).__struct_config__.tag  # type: ignore[return-value]


async def append(
    conn: psycopg.AsyncConnection[Any],
    stream_id: str,
    expected_version: int,
    events: Sequence[DomainEvent],
    *,
    correlation_id: str | None = None,
) -> list[Envelope]:
    """Append `events` after `expected_version`; raise `ConcurrencyConflict` if it moved on.

    A conflict aborts the surrounding transaction: roll it back, read again and re-decide.
    """
    return await append_many(conn, [(stream_id, expected_version, events)], correlation_id)


async def append_many(
    conn: psycopg.AsyncConnection[Any], batches: Sequence[Batch], correlation_id: str | None = None
) -> list[Envelope]:
    """`append` for several streams in one statement: (stream id, expected version, events)."""
    flat = [
        (stream, expected + i + 1, event)
        for stream, expected, events in batches
        for i, event in enumerate(events)
    ]
    ids = [str(uuid.uuid4()) for _ in flat]
    params = {
        "corr": correlation_id,
        "streams": [f[0] for f in flat],
        "versions": [f[1] for f in flat],
        "ids": ids,
        "types": [event_type(f[2]) for f in flat],
        "data": [encode(f[2]).decode() for f in flat],
    }
    try:  # in pipeline mode the error surfaces at the fetch
        cur = await conn.execute(_APPEND, params, prepare=True)
        rows = await cur.fetchall()
    except errors.UniqueViolation as e:
        if e.diag.constraint_name == "events_stream_version_key":
            raise ConcurrencyConflict(", ".join(b[0] for b in batches), batches[0][1]) from e
        raise
    stored = {str(row[1]): row for row in rows}
    return [
        Envelope(
            event_id=event_id,
            stream_id=stream,
            version=version,
            position=stored[event_id][0],
            recorded_at=stored[event_id][2],
            correlation_id=correlation_id,
            event=event,
        )
        for event_id, (stream, version, event) in zip(ids, flat, strict=True)
    ]


def _appending_statement(decide: str) -> str:
    return f"""
WITH {decide},
appended AS (
    INSERT INTO events (stream_id, version, event_id, event_type, data)
    SELECT stream_id, version, gen_random_uuid(), event_type, data FROM appending
    RETURNING position, stream_id
), queued AS (
    INSERT INTO outbox (position) SELECT position FROM appended
)
SELECT stream_id, {_WAKE} FROM appended
"""  # noqa: S608 (our own CTEs, never input)


async def append_decided(
    conn: psycopg.AsyncConnection[Any], decide: str, params: dict[str, Any]
) -> list[str]:
    """Decide and append in one statement, for batches of thousands: `decide` is the statement's
    CTEs (without `WITH`), the last named `appending` with columns stream_id, version (the new
    event's), event_type and data (jsonb); each of its rows is appended as `append` would, queued
    for the relay. Answers the stream ids appended to; `ConcurrencyConflict` as for `append`."""
    try:  # in pipeline mode the error surfaces at the fetch
        cur = await conn.execute(_appending_statement(decide), params, prepare=True)
        rows = await cur.fetchall()
    except errors.UniqueViolation as e:
        if e.diag.constraint_name == "events_stream_version_key":
            raise ConcurrencyConflict("a decided batch", -1) from e
        raise
    return [str(row[0]) for row in rows]


async def stream_version(conn: psycopg.AsyncConnection[Any], stream_id: str) -> int:
    """The version of the stream's latest event; 0 for a stream that has none."""
    cur = await conn.execute(
        "SELECT coalesce(max(version), 0) FROM events WHERE stream_id = %s", (stream_id,)
    )
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def read_stream(conn: psycopg.AsyncConnection[Any], stream_id: str) -> list[Envelope]:
    """Every event of one stream, in version order."""
    cur = await conn.execute(
        "SELECT event_id, version, position, recorded_at, correlation_id, data::text"
        " FROM events WHERE stream_id = %s ORDER BY version",
        (stream_id,),
    )
    return [envelope_from_row(stream_id, row) for row in await cur.fetchall()]


def envelope_from_row(stream_id: str, row: Sequence[Any]) -> Envelope:
    event_id, version, position, recorded_at, correlation_id, data = row
    return Envelope(
        event_id=str(event_id),
        stream_id=stream_id,
        version=version,
        position=position,
        recorded_at=recorded_at,
        correlation_id=correlation_id,
        event=decode_event(data),
    )


async def first_delivery(
    conn: psycopg.AsyncConnection[Any], consumer_group: str, event_id: str
) -> bool:
    """Record that `consumer_group` applied `event_id`; False if it already had.

    Call it inside the transaction that applies the event, so the effect and the record commit
    together: a redelivered event is then applied once in effect.
    """
    cur = await conn.execute(
        "INSERT INTO processed_events (consumer_group, event_id) VALUES (%s, %s)"
        " ON CONFLICT DO NOTHING",
        (consumer_group, event_id),
    )
    return cur.rowcount == 1
