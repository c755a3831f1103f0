"""Redis memory against its idle size (section 8: memory follows live state, not traffic).

The replay window is live state the contract allows: users' inboxes (`inbox:`) and the
projector's delivery marks (`delivered:`, kept 15 minutes), and the dead-letter stream holds
what waits for an operator. What Redis uses beyond those must come back near the idle size
(measured before any load) once trimming has had its interval.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

from chaos.verdicts import Verdicts

ALLOWED_PARTS = ("inbox:", "delivered:", "dead-letter")
TOLERANCE_BYTES = 4 * 1024 * 1024
TRIM_WAIT_S = 330.0


@dataclass(frozen=True)
class Memory:
    used: int
    allowed: int  # bytes in keys of the replay window and dead letters
    by_part: dict[str, int]

    @property
    def rest(self) -> int:
        return self.used - self.allowed


def measure(client: redis.Redis, prefix: str) -> Memory:
    used = int(client.info("memory")["used_memory"])
    by_part: dict[str, int] = {}
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        name = key.decode(errors="replace")[len(prefix) :]
        part = next((p for p in ALLOWED_PARTS if _unsharded(name).startswith(p)), _part(name))
        by_part[part] = by_part.get(part, 0) + int(client.memory_usage(key) or 0)
    allowed = sum(v for k, v in by_part.items() if k in ALLOWED_PARTS)
    return Memory(used, allowed, by_part)


def _unsharded(name: str) -> str:
    """An inbox shard's key as its part reads: `{inbox:3}:stream:u` as `inbox:u`,
    `{inbox:3}:delivered:e` as `delivered:e` (libs/inbox/inbox.py)."""
    if name.startswith("{inbox:"):
        rest = name.partition("}:")[2]
        return rest.replace("stream:", "inbox:", 1) if rest.startswith("stream:") else rest
    return name


def _part(name: str) -> str:
    for sep in (":", "."):
        if sep in name:
            return name.split(sep, 1)[0] + sep
    return name


def settle_memory(client: redis.Redis, prefix: str, idle: int, *, wait: bool) -> Memory:
    """The memory now; when `wait`, polled until its rest is near idle or the trim interval
    (entries acknowledged by every group go within 5 minutes) has passed."""
    deadline = time.monotonic() + (TRIM_WAIT_S if wait else 0)
    while True:
        found = measure(client, prefix)
        if found.rest <= idle + TOLERANCE_BYTES or time.monotonic() >= deadline:
            return found
        time.sleep(10)


def judge_memory(out: Verdicts, found: Memory, idle: int, peak: int, *, strict: bool) -> None:
    mib = 1024 * 1024
    top = sorted(found.by_part.items(), key=lambda kv: -kv[1])[:6]
    out.stats["redis memory"] = (
        f"idle {idle / mib:.1f} MiB, peak {peak / mib:.1f} MiB, end {found.used / mib:.1f} MiB"
        f" ({found.allowed / mib:.1f} MiB replay window and dead letters)"
    )
    out.stats["redis keys by part"] = ", ".join(f"{k} {v / 1024:.0f} KiB" for k, v in top)
    if strict and found.rest > idle + TOLERANCE_BYTES:
        out.add(
            "redis_memory_high",
            f"{found.rest / mib:.1f} MiB beyond the replay window vs idle {idle / mib:.1f} MiB"
            f" (+{TOLERANCE_BYTES / mib:.0f} MiB allowed)",
        )
