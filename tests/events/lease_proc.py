"""A process holding a lease, for the lease tests to freeze and kill. While it holds the lease it
appends (holder, token) to a Redis stream every 20 ms, each append fenced by its token.

Usage: python -m tests.events.lease_proc DATABASE_URL REDIS_URL ROLE HOLDER LOG_STREAM FENCE_KEY
"""

from __future__ import annotations

import asyncio
import signal
import sys

from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from libs.events.lease import FENCE_CHECK, Held, Lease, LeaseConfig, LeaseLost

APPEND = FENCE_CHECK + (
    "redis.call('XADD', KEYS[2], '*', 'holder', ARGV[2], 'token', ARGV[1])\nreturn 1\n"
)
CONFIG = LeaseConfig(ttl_s=3.0, renew_s=0.5, retry_s=0.2, margin_s=0.3)


async def main(
    database_url: str, redis_url: str, role: str, holder: str, log: str, fence: str
) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    redis = Redis.from_url(redis_url)
    append = redis.register_script(APPEND)

    async def work(held: Held) -> None:
        print(f"holding {held.token}", flush=True)
        try:
            while held.valid():
                if int(await append(keys=[fence, log], args=[held.token, holder])) != 1:
                    raise LeaseLost(role)
                await asyncio.sleep(0.02)
        finally:  # woken after its lease ran out, it stops at `valid()` or at a fenced append
            print(f"stopped {held.token}", flush=True)

    async with AsyncConnectionPool(
        database_url, min_size=1, max_size=2, open=False, kwargs={"autocommit": True}
    ) as pool:
        await Lease(pool, role, holder, config=CONFIG).hold_forever(work, stop)
    await redis.aclose()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:7]))
