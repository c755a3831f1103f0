"""What the timer service's handlers depend on, passed in by its bootstrap."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from services.timer.store import TimerStore


@dataclass(frozen=True)
class TimerDeps:
    active: Callable[[str], Awaitable[bool]]  # whether a broadcast is still active (active.py)
    store: TimerStore
    wake: asyncio.Event  # of the firing loop (scheduler.py)
