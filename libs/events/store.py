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

OUTBOX_CHANNEL = "weelo_outbox"

_APPEND = """
WITH new AS (
    INSERT INTO events (stream_id, version, event_id, event_type, data, correlation_id)
    SELECT %(stream)s, x.v, x.id, x.t, x.d::jsonb, %(corr)s
    FROM unnest(%(versions)s::int[], %(ids)s::uuid[], %(types)s::text[], %(data)s::text[])
         AS x(v, id, t, d)
    RETURNING position, version, event_id, recorded_at
), queued AS (
    INSERT INTO outbox (position) SELECT position FROM new
)
SELECT position, version, event_id, recorded_at, pg_notify(%(channel)s, '') FROM new
ORDER BY version
"""


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
    ids = [str(uuid.uuid4()) for _ in events]
    params = {
        "stream": stream_id,
        "corr": correlation_id,
        "versions": [expected_version + i + 1 for i in range(len(events))],
        "ids": ids,
        "types": [event_type(e) for e in events],
        "data": [encode(e).decode() for e in events],
        "channel": OUTBOX_CHANNEL,
    }
    try:
        cur = await conn.execute(_APPEND, params, prepare=True)
    except errors.UniqueViolation as e:
        if e.diag.constraint_name == "events_stream_version_key":
            raise ConcurrencyConflict(stream_id, expected_version) from e
        raise
    rows = await cur.fetchall()
    return [
        Envelope(
            event_id=str(row[2]),
            stream_id=stream_id,
            version=row[1],
            position=row[0],
            recorded_at=row[3],
            correlation_id=correlation_id,
            event=event,
        )
        for row, event in zip(rows, events, strict=True)
    ]


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
