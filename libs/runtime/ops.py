"""`weelo ops lag`: what is waiting where, gathered from a Redis client and a PostgreSQL
connection the caller opened.

- Every grouped stream of the prefix and each of its consumer groups: entries not read yet
  (`XINFO GROUPS` `lag`, counted on Redis 6.2; unknown after out-of-order deletes), entries
  read and not acknowledged, the age of the oldest of those, entries being retried after a
  failure.
- Committed events not on a stream yet: the rows of the `outbox` table and the oldest one's age.
- The dead-letter stream's length.
- Who holds each single-holder role, since when (`role_holders`).
"""

from __future__ import annotations

from typing import Any

import msgspec
import psycopg
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from libs.events import lease, outbox
from libs.events.clock import iso_ms
from libs.events.lease import projector_role
from libs.events.relay import RELAY_ROLE
from libs.events.retry import failures_key
from libs.events.streams import dead_letter_stream, parse_id
from libs.events.trim import group_lag, grouped_streams


class GroupLag(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    stream: str
    group: str
    consumers: int
    waiting: int | None  # None: Redis cannot tell (entries were deleted in between)
    pending: int
    oldest_pending_age_s: float | None
    retrying: int


class RoleHolder(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    role: str
    holder: str | None = None  # None: nobody holds it
    since: str | None = None
    until: str | None = None  # a lease's expiry; None for a lock (held while its session lives)
    token: int | None = None  # a lease's fencing token


class Outbox(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    events: int
    oldest_age_s: float | None


class LagReport(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    groups: list[GroupLag]
    outbox: Outbox
    dead_letters: int
    roles: list[RoleHolder]


async def lag_report(redis: Redis, conn: psycopg.AsyncConnection[Any], prefix: str) -> LagReport:
    return LagReport(
        groups=await group_lags(redis, grouped_streams(prefix)),
        outbox=await outbox_backlog(conn),
        dead_letters=int(await redis.xlen(dead_letter_stream(prefix))),
        roles=await role_holders(conn, prefix),
    )


async def group_lags(redis: Redis, streams: tuple[str, ...]) -> list[GroupLag]:
    seconds, micros = await redis.time()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    found = []
    for stream in streams:
        try:
            groups: Any = await redis.xinfo_groups(stream)
        except ResponseError:  # no such stream (yet)
            continue
        for group in groups:
            found.append(await _group_lag(redis, stream, group, now_ms))
    return found


async def _group_lag(redis: Redis, stream: str, group: dict[str, Any], now_ms: int) -> GroupLag:
    name = _text(group["name"])
    oldest = None
    if int(group["pending"]):
        summary: Any = await redis.xpending(stream, name)
        if summary["min"] is not None:
            oldest = max(now_ms - parse_id(summary["min"])[0], 0) / 1000
    lag = await group_lag(redis, stream, group)
    return GroupLag(
        stream=stream,
        group=name,
        consumers=int(group["consumers"]),
        waiting=lag,
        pending=int(group["pending"]),
        oldest_pending_age_s=oldest,
        retrying=int(await redis.hlen(failures_key(stream, name))),
    )


async def outbox_backlog(conn: psycopg.AsyncConnection[Any]) -> Outbox:
    events, oldest_age_s = await outbox.backlog(conn)
    return Outbox(events=events, oldest_age_s=oldest_age_s)


async def role_holders(conn: psycopg.AsyncConnection[Any], prefix: str) -> list[RoleHolder]:
    """Who holds each single-holder role of this deployment now (a live lease), since when."""
    mine = {RELAY_ROLE, projector_role(prefix)}
    return [
        RoleHolder(
            role=h.role.split(":", 1)[0],
            holder=h.holder,
            since=iso_ms(h.since),
            until=iso_ms(h.expires_at),
            token=h.token,
        )
        for h in await lease.holders(conn)
        if h.live and h.role in mine
    ]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
