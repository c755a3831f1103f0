"""arq's worker as its users run it, for the `timers` benchmark: `run_worker` with one function,
`ran`, which appends "job id, due, ran-at" to a Redis list (epoch seconds; ran-at is the wall
clock when arq started the job). Every setting is arq's default but `poll_delay` (the one the
benchmark tunes) and the queue's name (the benchmark's own, so it shares no key with anyone).
Logging is left unconfigured (arq's CLI would log a line per job at INFO).

Run with the arq virtualenv's interpreter (`bench.peers.venvs.peer_python("arq")`); imports arq,
redis and the standard library only. Environment: `PEER_REDIS_URL`, `PEER_QUEUE`,
`PEER_RAN_KEY`, `PEER_POLL_DELAY` (seconds). SIGTERM stops it (arq's own signal handling).
"""

from __future__ import annotations

import os
import time
from typing import Any

from arq.connections import RedisSettings
from arq.worker import run_worker


async def ran(ctx: dict[str, Any], due: float) -> None:
    """Note when arq started this job, beside the time it was due (epoch seconds)."""
    at = time.time()
    await ctx["redis"].rpush(os.environ["PEER_RAN_KEY"], f"{ctx['job_id']} {due:.6f} {at:.6f}")


class WorkerSettings:
    """The worker's settings as a user's module holds them: the function, nothing else."""

    functions = [ran]


def main() -> None:
    """Run arq's worker until SIGTERM."""
    run_worker(
        WorkerSettings,  # type: ignore[arg-type]
        redis_settings=RedisSettings.from_dsn(os.environ["PEER_REDIS_URL"]),
        queue_name=os.environ["PEER_QUEUE"],
        poll_delay=float(os.environ["PEER_POLL_DELAY"]),
    )


if __name__ == "__main__":
    main()
