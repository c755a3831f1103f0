"""arq's producer for the `timers` benchmark: enqueue COUNT deferred jobs of `ran` with
`_defer_until`, spread evenly over SPREAD seconds from START (epoch seconds; SPREAD 0 puts them
all at START), each with its due time (epoch seconds) as its argument and job id PREFIX + index.

Run with the arq virtualenv's interpreter; imports arq, redis and the standard library only.
Usage: `arq_produce.py REDIS_URL QUEUE PREFIX COUNT START SPREAD`; prints `enqueued N` at the end.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime

from arq.connections import ArqRedis, RedisSettings, create_pool

CONCURRENT = 100  # enqueues in flight at once (each is one WATCH/MULTI transaction in arq)


def due_at(start: float, spread: float, count: int, index: int) -> datetime:
    """When job `index` of `count` is due: evenly over `spread` seconds from `start`."""
    return datetime.fromtimestamp(start + spread * index / count, UTC)


async def _enqueue(pool: ArqRedis, queue: str, job_id: str, due: datetime) -> bool:
    job = await pool.enqueue_job(
        "ran", due.timestamp(), _job_id=job_id, _queue_name=queue, _defer_until=due
    )
    return job is not None


async def produce(
    url: str, queue: str, prefix: str, count: int, start: float, spread: float
) -> int:
    """Enqueue every job; answers how many arq accepted."""
    pool = await create_pool(RedisSettings.from_dsn(url))
    done = 0
    try:
        for first in range(0, count, CONCURRENT):
            batch = range(first, min(first + CONCURRENT, count))
            results = await asyncio.gather(
                *(
                    _enqueue(pool, queue, f"{prefix}{i}", due_at(start, spread, count, i))
                    for i in batch
                )
            )
            done += sum(results)
    finally:
        await pool.aclose()
    return done


def main() -> None:
    url, queue, prefix, count, start, spread = sys.argv[1:7]
    done = asyncio.run(produce(url, queue, prefix, int(count), float(start), float(spread)))
    print(f"enqueued {done}", flush=True)


if __name__ == "__main__":
    main()
