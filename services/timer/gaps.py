"""The timer's heap, tended in the gaps of its schedule.

A full collection of the timer process's heap (about 65,000 objects once everything is
imported, more with a backlog in hand) stops its event loop for 30-40 ms on the benchmark
machine: a timer due meanwhile fires that late. So, as the gateway does (libs/runtime/heap.py),
the survivors are moved to the permanent generation every `settle_every_s` (the automatic
collections then walk only younger objects), and what only a full collection frees is collected
every `full_every_s`. Unlike the gateway, the timer knows when it is next needed: both happen
only when the firing loop is about to sleep long enough, a full collection waiting at most
`full_overdue_s` for such a gap.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from libs.runtime.heap import full_collection, settle


@dataclass(frozen=True)
class GapHeap:
    settle_every_s: float = 5.0
    full_every_s: float = 900.0
    settle_gap_s: float = 0.003  # the least sleep ahead for a settle (about 1 ms)
    full_gap_s: float = 0.15  # the least sleep ahead for a full collection, with no batch busy
    full_overdue_s: float = 60.0


class HeapInGaps:
    def __init__(self, config: GapHeap, clock: Callable[[], float] = time.monotonic) -> None:
        self._config, self._clock = config, clock
        now = clock()
        self._next_settle = now + config.settle_every_s
        self._next_full = now + config.full_every_s

    def tend(self, gap_s: float, busy: bool) -> bool:
        """Settle or collect fully if one is due and `gap_s` (the sleep ahead) allows it;
        whether it did (time has passed)."""
        now, config = self._clock(), self._config
        if now >= self._next_full and (
            (gap_s >= config.full_gap_s and not busy)
            or now >= self._next_full + config.full_overdue_s
        ):
            full_collection()
            settle()
            self._next_full = self._clock() + config.full_every_s
            self._next_settle = self._clock() + config.settle_every_s
            return True
        if now >= self._next_settle and gap_s >= config.settle_gap_s:
            settle()
            self._next_settle = self._clock() + config.settle_every_s
            return True
        return False
