"""Keep the garbage collector's pauses short in a process that holds many long-lived objects:
the gateway's open sockets, the fan-out's projector state.

Each open WebSocket holds about 130 objects the cycle collector tracks (the connection, its
tasks, buffers, headers, the ASGI call chain). A full collection walks every one of them: with
5,000 sockets that is 0.3-0.5 s with the event loop stopped (1.6 s at load 4), and under load
CPython runs one every 10-20 s, so every message in flight waits that long.

The gateway (and the fan-out, whose projector keeps thousands of broadcasts' state and its
delivery records) therefore moves what survives to CPython's permanent generation every
`settle_every_s` (`gc.freeze()`, after a collection of the young generations so that young
garbage is not kept): the automatic collections then only walk objects younger than that.
Frozen objects are still freed by reference counting when a socket closes
(tests/realtime/test_heap_gateway.py: sockets opened, used and closed, refused tokens and a Redis
outage leave the permanent generation at its size before and no cyclic garbage).

What only a full collection frees is a cycle that became garbage after it was frozen: it stays
in the permanent generation. So a full collection runs on evidence, not by the clock: every
`check_every_s` the permanent generation is counted (a walk of it, about 5 ms with 5,000
sockets), and once it holds `growth_factor` times what it held after the last full collection
and at least `min_growth` objects more, one runs. Frozen garbage is so bounded by the larger of
the two; live sockets past a process's earlier peak fire it too, which then finds little and
raises the mark. `full_every_s` adds a clock period (none by default), and SIGUSR1 forces one
(an operator's lever; the benchmark's measured pause). Every full collection is logged
(`gc_full_collection`: why, unreachable objects found, seconds) and measured.

Settings (`HeapConfig.from_env`): `HEAP_SETTLE_EVERY_S`, `HEAP_CHECK_EVERY_S`,
`HEAP_FULL_GROWTH_FACTOR`, `HEAP_FULL_MIN_GROWTH`, `HEAP_FULL_EVERY_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields

import structlog
from prometheus_client import Counter, Gauge, Histogram

log = structlog.get_logger(__name__)

FULL_COLLECTION = Histogram(
    "weelo_full_collection_seconds",
    "How long a full garbage collection stopped the process's event loop",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
UNREACHABLE = Counter(
    "weelo_full_collection_unreachable_objects",
    "Objects full garbage collections found unreachable (cyclic garbage)",
)
FROZEN = Gauge("weelo_gc_frozen_objects", "Objects in the permanent generation when last counted")

_SETTINGS = {
    "settle_every_s": "HEAP_SETTLE_EVERY_S",
    "check_every_s": "HEAP_CHECK_EVERY_S",
    "growth_factor": "HEAP_FULL_GROWTH_FACTOR",
    "min_growth": "HEAP_FULL_MIN_GROWTH",
    "full_every_s": "HEAP_FULL_EVERY_S",
}


@dataclass(frozen=True)
class HeapConfig:
    settle_every_s: float = 5.0
    check_every_s: float = 60.0  # counting walks the permanent generation
    growth_factor: float = 2.0  # of the permanent generation after the last full collection
    min_growth: int = 1_000_000  # objects; 5,000 sockets hold about 650,000
    full_every_s: float = 0.0  # a clock period as well; 0: none

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> HeapConfig:
        """The defaults, each replaced by its `HEAP_*` variable when that is set."""
        given: dict[str, float | int] = {}
        for f in fields(cls):
            raw = environ.get(_SETTINGS[f.name], "").strip()
            if raw:
                given[f.name] = int(raw) if f.type == "int" else float(raw)
        return cls(**given)  # type: ignore[arg-type]


def settle() -> None:
    """Collect the young generations, then exempt every survivor from later collections."""
    gc.collect(1)
    gc.freeze()


def frozen_objects() -> int:
    """How many objects the permanent generation holds (a walk of it), also as a metric."""
    count = gc.get_freeze_count()
    FROZEN.set(count)
    return count


def full_collection(reason: str = "period") -> int:
    """Collect everything, frozen objects included; the number of unreachable objects found."""
    found, took = _collect_all()
    _record(reason, found, took)
    return found


def _collect_all() -> tuple[int, float]:
    started = time.perf_counter()
    gc.unfreeze()
    found = gc.collect()
    return found, time.perf_counter() - started


def _record(reason: str, found: int, took: float) -> None:
    FULL_COLLECTION.observe(took)
    UNREACHABLE.inc(found)
    log.info("gc_full_collection", reason=reason, unreachable=found, seconds=round(took, 3))


class HeapTender:
    """The policy's state: when to settle, count and collect fully (`tick`), or now (`force`)."""

    def __init__(self, config: HeapConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config, self._clock = config, clock
        now = clock()
        self._next_check = now
        self._next_full = now + config.full_every_s if config.full_every_s > 0 else None
        self.mark: int | None = None  # the permanent generation after the last full collection

    def tick(self) -> str | None:
        """Settle, or collect fully if one is due; why it collected, if it did."""
        now = self._clock()
        if self._next_full is not None and now >= self._next_full:
            self.force("period")
            return "period"
        settle()
        if now < self._next_check:
            return None
        self._next_check = now + self.config.check_every_s
        count = frozen_objects()
        if self.mark is None:  # the first count: what the process holds once it has started
            self.mark = count
        limit = max(self.mark * self.config.growth_factor, self.mark + self.config.min_growth)
        if count < limit:
            return None
        self.force("growth")
        return "growth"

    def force(self, reason: str = "signal") -> int:
        """A full collection now, then settle and count; unreachable objects found."""
        found, took = _collect_all()
        settle()
        self.mark = frozen_objects()
        _record(reason, found, took)  # counted last: a reader of the count sees the rest
        now = self._clock()
        self._next_check = now + self.config.check_every_s
        if self._next_full is not None:
            self._next_full = now + self.config.full_every_s
        return found


@contextlib.contextmanager
def _on_signal(sig: signal.Signals, handler: Callable[[], object]) -> Iterator[None]:
    """`handler` on `sig` in the running loop while inside (nothing where the loop cannot)."""
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(sig, handler)
    except (ValueError, RuntimeError, NotImplementedError):  # not the main thread's loop
        yield
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(sig)


async def tend_heap(stop: asyncio.Event, config: HeapConfig | None = None) -> None:
    """Tend the heap every `settle_every_s` until `stop`; SIGUSR1 forces a full collection."""
    tender = HeapTender(config or HeapConfig.from_env())
    with _on_signal(signal.SIGUSR1, tender.force):
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), tender.config.settle_every_s)
            tender.tick()
