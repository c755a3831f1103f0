"""The dead-letter stream's records: written by the runner, read, replayed and purged by
`weelo ops dead-letters`.

A record names the `stream`, `group` and `entryId` of the entry, how many times it was
delivered (`deliveries`), its last `error`, the `consumer` that gave up on it, when it first
failed (`firstFailure`, ISO 8601) and the entry's own fields, each as `field:<name>`.

Replaying puts the entry's fields back on its stream as a new entry (new id) with one more
field, `replayFor: <group>`: runners of other groups of that stream acknowledge it without
running it, and the group's runner hands its handler exactly the original fields.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from libs.events.metrics import DEAD_LETTERS

REPLAY_FIELD = b"replayFor"
_FIELD = b"field:"


def record(
    *,
    stream: str,
    group: str,
    entry_id: str,
    deliveries: int,
    error: str,
    consumer: str,
    first_failure_ms: int,
    fields: Mapping[bytes, bytes],
) -> dict[Any, Any]:
    written: dict[Any, Any] = {
        b"stream": stream,
        b"group": group,
        b"entryId": entry_id,
        b"deliveries": deliveries,
        b"error": error[:2000],
        b"consumer": consumer,
        b"firstFailure": iso_from_ms(first_failure_ms),
    }
    written.update({_FIELD + k: v for k, v in fields.items() if k != REPLAY_FIELD})
    return written


def iso_from_ms(ms: int) -> str:
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


@dataclass(frozen=True)
class DeadLetter:
    id: str  # the record's own id on the dead-letter stream
    stream: str
    group: str
    entry_id: str
    deliveries: int
    error: str
    consumer: str
    first_failure: str | None
    fields: dict[bytes, bytes]


def parse(record_id: bytes | str, raw: Mapping[bytes, bytes]) -> DeadLetter:
    def text(name: bytes) -> str:
        return raw.get(name, b"").decode(errors="replace")

    return DeadLetter(
        id=_text(record_id),
        stream=text(b"stream"),
        group=text(b"group"),
        entry_id=text(b"entryId"),
        deliveries=int(raw.get(b"deliveries", b"0") or 0),
        error=text(b"error"),
        consumer=text(b"consumer"),
        first_failure=text(b"firstFailure") or None,
        fields={k[len(_FIELD) :]: v for k, v in raw.items() if k.startswith(_FIELD)},
    )


async def send(
    redis: Redis,
    dead_letter: str,
    written: dict[Any, Any],
    *,
    failures_key: str,
    maxlen: int,
) -> None:
    """Add `written` (a `record`) to the dead-letter stream, acknowledge the entry and forget
    its retry record, in one round trip."""
    stream, group, entry_id = (str(written[k]) for k in (b"stream", b"group", b"entryId"))
    async with redis.pipeline(transaction=False) as pipe:
        pipe.xadd(dead_letter, written, maxlen=maxlen, approximate=True)
        pipe.xack(stream, group, entry_id)
        pipe.hdel(failures_key, entry_id)
        await pipe.execute()
    DEAD_LETTERS.labels(stream, group).inc()


async def read(redis: Redis, dead_letter: str, page: int = 500) -> list[DeadLetter]:
    """Every record, oldest first."""
    found: list[DeadLetter] = []
    start = "-"
    while True:
        entries: Any = await redis.xrange(dead_letter, start, "+", count=page)
        found.extend(parse(i, f) for i, f in entries)
        if len(entries) < page:
            return found
        start = "(" + _text(entries[-1][0])


async def read_one(redis: Redis, dead_letter: str, record_id: str) -> DeadLetter | None:
    entries: Any = await redis.xrange(dead_letter, record_id, record_id)
    return parse(*entries[0]) if entries else None


async def replay(redis: Redis, dead_letter: str, found: DeadLetter) -> str:
    """Put the entry back on its stream for its group; remove the record. The new entry's id."""
    fields: dict[Any, Any] = {**found.fields, REPLAY_FIELD: found.group.encode()}
    new_id: Any = await redis.xadd(found.stream, fields)
    await redis.xdel(dead_letter, found.id)
    return _text(new_id)


async def purge(redis: Redis, dead_letter: str, record_ids: Sequence[str]) -> int:
    return int(await redis.xdel(dead_letter, *record_ids)) if record_ids else 0


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
