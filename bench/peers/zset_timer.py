"""The floor of the `timers` benchmark: the least a Redis timer can be, one sorted set of due
times (score = due epoch ms rounded up, member = "id due" with due in epoch seconds) and one
poller.

The poller runs a Lua script that pops up to BATCH members due by now (ZRANGEBYSCORE ... LIMIT
then ZREM, atomically), appends "member ran-at" (the wall clock when the pop answered) to a
Redis list, and sleeps until the earliest remaining due time, at most MAX_SLEEP_S (so a timer
added meanwhile is noticed within it). Nothing is durable beyond Redis, nothing is retried: a
floor, not a peer product.

Imports redis and the standard library only. Usage: `zset_timer.py REDIS_URL ZSET_KEY RAN_KEY`;
SIGTERM stops it.
"""

from __future__ import annotations

import signal
import sys
import time
from typing import Any

import redis

BATCH = 1000
MAX_SLEEP_S = 0.01
_POP = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {due, first[2] or false}
"""


def _pause(next_due: Any) -> float:
    """Seconds to sleep: until the earliest due time, at most MAX_SLEEP_S."""
    if not next_due:
        return MAX_SLEEP_S
    return max(0.0, min(MAX_SLEEP_S, float(next_due) / 1000 - time.time()))


def poll(url: str, zset: str, ran: str) -> None:
    """Pop and note due members until SIGTERM."""
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: stopping.append(signum))
    client = redis.Redis.from_url(url)
    pop = client.register_script(_POP)
    while not stopping:
        due, next_due = pop(keys=[zset], args=[int(time.time() * 1000), BATCH])
        if due:
            at = time.time()
            client.rpush(ran, *(f"{m.decode()} {at:.6f}" for m in due))
            if len(due) == BATCH:
                continue
        time.sleep(_pause(next_due))


if __name__ == "__main__":
    poll(*sys.argv[1:4])
