"""The one lease every single-holder role uses (publishing the outbox, the fan-out): at most one
holder at a time, moved to another instance within seconds when its holder dies, freezes or is
cut off, and fenced, so that a holder which wakes up after losing it writes nothing.

- The lease is a row of `leases` (role, holder, token, expires_at), decided by PostgreSQL's
  clock alone: an instance takes it only once it has expired, and every new holder gets a larger
  `token` (the fencing token).
- The holder renews it every `renew_s`, while its `healthy` check passes (so a holder cut off
  from Redis lets it go too). It trusts the lease only until `ttl_s - margin_s` after the moment
  it sent its last successful renewal, by its own monotonic clock, which is never later than
  PostgreSQL's expiry; past that it stops its work, renewed or not.
- Every write the role makes carries the token and is refused where a larger one was seen
  (`FENCE_CHECK` in each Redis script the role runs, or `fence`): a frozen holder that wakes
  up mid-write is refused once its successor has written, or fenced, anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from redis.asyncio import Redis
from redis.exceptions import RedisError

from libs.events.metrics import LEASE_ACQUIRED, LEASE_HELD, LEASE_TOKEN

log = structlog.get_logger(__name__)

Conn = psycopg.AsyncConnection[Any]
Healthy = Callable[[], Awaitable[bool]]


@dataclass(frozen=True)
class LeaseConfig:
    ttl_s: float = 4.0  # an expired lease moves: a holder killed or frozen is replaced after it
    renew_s: float = 0.5
    retry_s: float = 0.5  # how often an instance standing by asks for the lease
    margin_s: float = 0.5  # the holder stops this long before PostgreSQL would let it go
    grace_s: float = 2.0  # the work's time to end once the lease is lost, before it is cancelled


_ACQUIRE = """
INSERT INTO leases AS l (role, holder, token, expires_at, acquired_at)
VALUES (%(role)s, %(holder)s, 1, clock_timestamp() + make_interval(secs => %(ttl)s),
        clock_timestamp())
ON CONFLICT (role) DO UPDATE
SET holder = excluded.holder, token = l.token + 1, expires_at = excluded.expires_at,
    acquired_at = excluded.acquired_at
WHERE l.expires_at < clock_timestamp()
RETURNING token
"""
_RENEW = """
UPDATE leases SET expires_at = clock_timestamp() + make_interval(secs => %(ttl)s)
WHERE role = %(role)s AND token = %(token)s AND expires_at > clock_timestamp()
RETURNING 1
"""
_RELEASE = """
UPDATE leases SET expires_at = clock_timestamp() - interval '1 millisecond'
WHERE role = %(role)s AND token = %(token)s
"""
_HOLDERS = """
SELECT role, holder, token, acquired_at, expires_at, expires_at > clock_timestamp()
FROM leases ORDER BY role
"""
# KEYS[1] the role's fence key, ARGV[1] the writer's token: -1 when a larger token was seen.
FENCE_CHECK = """
local seen = tonumber(redis.call('GET', KEYS[1]) or '0')
local token = tonumber(ARGV[1])
if token < seen then return -1 end
if token > seen then redis.call('SET', KEYS[1], ARGV[1]) end
"""
FENCE_SCRIPT = FENCE_CHECK + "return 1\n"


def projector_role(prefix: str) -> str:
    """The projector's lease: one per deployment (key prefix), since deployments may share a
    database. (The relay's is one per database, `relay.RELAY_ROLE`: it drains one outbox.)"""
    return f"projector:{prefix}"


class LeaseLost(Exception):
    """A write was refused: a newer holder of the role exists."""


@dataclass
class Held:
    """A lease this instance holds: its role, fencing token, and the event set once it must
    stop (lost, given up, or the process stops)."""

    role: str
    token: int
    valid_until: float  # monotonic
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    def valid(self) -> bool:
        return not self.ended.is_set() and time.monotonic() < self.valid_until


@dataclass(frozen=True)
class Holder:
    """Who holds a role, as `weelo ops lag` and `/metrics` show it."""

    role: str
    holder: str
    token: int
    since: datetime
    expires_at: datetime
    live: bool


Work = Callable[[Held], Coroutine[Any, Any, None]]


async def acquire(conn: Conn, role: str, holder: str, config: LeaseConfig) -> Held | None:
    """The lease if it is free (never held, or expired); None while someone else holds it."""
    sent = time.monotonic()
    cur = await conn.execute(_ACQUIRE, {"role": role, "holder": holder, "ttl": config.ttl_s})
    row = await cur.fetchone()
    if row is None:
        return None
    return Held(role, int(row[0]), sent + config.ttl_s - config.margin_s)


async def renew(conn: Conn, held: Held, config: LeaseConfig) -> bool:
    """Extend the lease; False if it is no longer ours (it expired, or moved)."""
    sent = time.monotonic()
    cur = await conn.execute(_RENEW, {"role": held.role, "token": held.token, "ttl": config.ttl_s})
    if await cur.fetchone() is None:
        return False
    held.valid_until = sent + config.ttl_s - config.margin_s
    return True


async def release(conn: Conn, held: Held) -> None:
    """Let the lease go at once, so that an instance standing by takes it without waiting."""
    await conn.execute(_RELEASE, {"role": held.role, "token": held.token})


async def holders(conn: Conn) -> list[Holder]:
    cur = await conn.execute(_HOLDERS)
    return [Holder(r[0], r[1], int(r[2]), r[3], r[4], bool(r[5])) for r in await cur.fetchall()]


def redis_answers(redis: Redis) -> Healthy:
    """A holder's health check for a role that writes to Redis: it answers a PING."""

    async def check() -> bool:
        try:
            return bool(await redis.ping())
        except (RedisError, OSError):
            return False

    return check


async def fence(redis: Redis, key: str, token: int) -> bool:
    """Record `token` as the newest seen at `key`; False if a newer one already was."""
    return int(await redis.eval(FENCE_SCRIPT, 1, key, token)) == 1


class Lease:
    """The lease of `role` as seen by instance `holder`."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        role: str,
        holder: str,
        *,
        config: LeaseConfig | None = None,
        healthy: Healthy | None = None,
    ) -> None:
        self._pool, self.role, self.holder = pool, role, holder
        self._config = config or LeaseConfig()
        self._healthy = healthy

    async def hold_forever(self, work: Work, stop: asyncio.Event) -> None:
        """Run `work(held)` whenever this instance holds the lease, until `stop` is set; stand
        by otherwise. `work` must return soon after `held.ended` is set."""
        standing_by = False
        while not stop.is_set():
            try:
                held = await self._try_acquire()
                if held is not None:
                    await self._lead(held, work, stop)
                elif not standing_by:
                    log.info("lease_standing_by", role=self.role, holder=self.holder)
                standing_by = held is None
            except (psycopg.Error, PoolTimeout, OSError) as e:
                log.warning("lease_unavailable", role=self.role, error=str(e))
            except LeaseLost:  # a write was refused, or the lease ran out mid-work
                log.info("lease_lost", role=self.role, holder=self.holder)
            except Exception as e:  # the work failed: give the lease up, then ask again afresh
                log.exception("lease_work_failed", role=self.role, error=str(e))
            await _wait(stop, self._config.retry_s)

    async def _try_acquire(self) -> Held | None:
        """The lease if it is free and this instance is healthy."""
        if self._healthy is not None and not await self._healthy():
            return None
        async with self._pool.connection(timeout=self._config.renew_s) as conn:
            held = await acquire(conn, self.role, self.holder, self._config)
        if held is not None:
            log.info("lease_acquired", role=self.role, holder=self.holder, token=held.token)
        return held

    async def _lead(self, held: Held, work: Work, stop: asyncio.Event) -> None:
        role = self.role.split(":", 1)[0]
        LEASE_ACQUIRED.labels(role).inc()
        LEASE_HELD.labels(role).set(1)
        LEASE_TOKEN.labels(role).set(held.token)
        try:
            await self._work(held, work, stop)
        finally:
            LEASE_HELD.labels(role).set(0)

    async def _work(self, held: Held, work: Work, stop: asyncio.Event) -> None:
        working = asyncio.create_task(work(held))
        keeping = asyncio.create_task(self._keep(held, stop))
        try:
            await asyncio.wait([working, keeping], return_when=asyncio.FIRST_COMPLETED)
            held.ended.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(working), self._config.grace_s)
        finally:
            held.ended.set()
            for task in (working, keeping):
                task.cancel()
            await asyncio.gather(keeping, return_exceptions=True)
            outcome = (await asyncio.gather(working, return_exceptions=True))[0]
            await self._give_up(held)
        if isinstance(outcome, Exception):
            raise outcome

    async def _keep(self, held: Held, stop: asyncio.Event) -> None:
        """Renew every `renew_s`; return once the lease is refused, the holder is unhealthy, or
        it can no longer be trusted (renewals failed until its time ran out)."""
        while held.valid():
            left = max(held.valid_until - time.monotonic(), 0.0)
            await _wait(stop, min(self._config.renew_s, left))
            if stop.is_set() or not held.valid():
                break
            if await self._renew_once(held) is False:
                break
        log.info("lease_ended", role=held.role, token=held.token, stopping=stop.is_set())

    async def _renew_once(self, held: Held) -> bool | None:
        """True when renewed, False when refused or unhealthy, None when PostgreSQL did not
        answer in time (try again while the lease lasts)."""
        left = max(held.valid_until - time.monotonic(), 0.01)
        try:
            async with asyncio.timeout(left):
                if self._healthy is not None and not await self._healthy():
                    log.warning("lease_holder_unhealthy", role=held.role)
                    return False
                async with self._pool.connection(timeout=left) as conn:
                    return await renew(conn, held, self._config)
        except (psycopg.Error, PoolTimeout, OSError, RedisError) as e:  # TimeoutError: OSError
            log.warning("lease_renewal_failed", role=held.role, error=repr(e))
            return None

    async def _give_up(self, held: Held) -> None:
        timeout = self._config.renew_s
        with contextlib.suppress(psycopg.Error, PoolTimeout, OSError):
            async with asyncio.timeout(timeout), self._pool.connection(timeout=timeout) as conn:
                await release(conn, held)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
