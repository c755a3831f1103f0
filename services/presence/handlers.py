"""The presence service on one screen: which command runs which handler.

Beside its commands the service runs the heartbeat TTL sweep (`sweep.py`), which turns offline
the online drivers unseen for `PRESENCE_TTL_SECONDS`.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from libs.events.bus import CommandTable
from libs.events.commands import Command, SetAvailability
from libs.runtime.clock import Clock
from services.presence.availability import set_availability

HANDLERS: dict[type[Command], Callable[..., Awaitable[Any]]] = {
    SetAvailability: set_availability,
}


def bind(clock: Clock) -> CommandTable:
    """The handler table with this service's dependencies applied."""
    return {kind: functools.partial(fn, clock) for kind, fn in HANDLERS.items()}
