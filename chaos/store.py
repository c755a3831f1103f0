"""What PostgreSQL and Redis hold once the run has settled, read once for every check."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import msgspec
import psycopg
import redis

from chaos.faults import HARNESS_APP

_EVENTS = """
SELECT position, stream_id, version, event_id::text, event_type, data::text,
       (extract(epoch FROM recorded_at) * 1000000)::bigint
FROM events ORDER BY position
"""
_OUTBOX = """
SELECT count(*), min(o.position), min(extract(epoch FROM e.recorded_at))::float8
FROM outbox o JOIN events e USING (position)
"""
_BROADCASTS = """
SELECT broadcast_id, customer_id, state, extract(epoch FROM expires_at)::float8 FROM broadcasts
"""
_ASSIGNMENTS = """
SELECT assignment_id, broadcast_id, truck_request_id, transporter_id, state, driver_id, vehicle_id
FROM assignments
"""


@dataclass(frozen=True)
class Event:
    position: int
    stream_id: str
    version: int
    event_id: str
    type: str
    data: dict[str, Any]
    micros: int  # recorded_at in epoch microseconds, PostgreSQL's clock

    @property
    def at(self) -> float:
        return self.micros / 1e6

    @property
    def at_iso(self) -> str:
        """recorded_at as the frames show it (ISO 8601, milliseconds truncated, Z)."""
        moment = datetime.fromtimestamp(self.micros // 1_000_000, UTC)
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{self.micros % 1_000_000 // 1000:03d}Z"

    @property
    def category(self) -> str:
        return self.stream_id.split("-", 1)[0]


@dataclass(frozen=True)
class Outbox:
    rows: int
    lowest: int | None
    oldest_at: float | None


@dataclass
class Store:
    read_at: float
    events: list[Event]
    outbox: Outbox
    broadcasts: dict[str, tuple[str, str, float]]  # id: customer, state, expires_at
    assignments: dict[str, tuple[str, ...]]  # id: broadcast, truck request, transporter, state,
    # driver, vehicle
    on_streams: dict[str, set[str]] = field(default_factory=dict)  # category: event ids


def read_store(database_url: str, redis_client: redis.Redis, prefix: str) -> Store:
    with psycopg.connect(database_url, application_name=HARNESS_APP) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ  # one snapshot for all
        read_at = time.time()
        events = [
            Event(int(p), str(s), int(v), str(i), str(t), json.loads(str(d)), int(str(a)))
            for p, s, v, i, t, d, a in conn.execute(_EVENTS).fetchall()
        ]
        count, lowest, oldest = conn.execute(_OUTBOX).fetchone() or (0, None, None)
        broadcasts = {
            str(b): (str(c), str(s), float(str(e)))
            for b, c, s, e in conn.execute(_BROADCASTS).fetchall()
        }
        assignments = {
            str(row[0]): tuple(str(x) if x is not None else "" for x in row[1:])
            for row in conn.execute(_ASSIGNMENTS).fetchall()
        }
    store = Store(
        read_at,
        events,
        Outbox(int(str(count)), None if lowest is None else int(str(lowest)),
               None if oldest is None else float(str(oldest))),
        broadcasts,
        assignments,
    )  # fmt: skip
    store.on_streams = read_streams(redis_client, prefix, {e.category for e in events})
    return store


def read_streams(client: redis.Redis, prefix: str, categories: set[str]) -> dict[str, set[str]]:
    """The event ids on every `<prefix>{bus}:events:<category>` stream."""
    found: dict[str, set[str]] = {}
    for category in categories:
        ids: set[str] = set()
        start = "-"
        while True:
            stream = f"{prefix}{{bus}}:events:{category}"
            page = cast(
                list[tuple[bytes, dict[bytes, bytes]]], client.xrange(stream, start, "+", 1000)
            )
            for _, fields in page:
                raw = fields.get(b"envelope")
                if raw is not None:
                    ids.add(str(json.loads(raw)["eventId"]))
            if len(page) < 1000:
                break
            start = "(" + page[-1][0].decode()
        found[category] = ids
    return found


def dump_store(store: Store, path: Path) -> None:
    """The store as read, so a finished run can be checked again (`python -m chaos --recheck`)."""
    path.write_bytes(msgspec.json.encode(store))


def load_store(path: Path) -> Store:
    return msgspec.json.decode(path.read_bytes(), type=Store)
