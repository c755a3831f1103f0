"""The acceptance service on one screen: which command runs which handler."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from libs.events.bus import CommandTable, Pipelined
from libs.events.commands import AcceptSlots, AssignDriver, Command
from libs.runtime.clock import Clock
from services.acceptance.assign import assign_driver
from services.acceptance.claim import accept_slots

HANDLERS: dict[type[Command], Callable[..., Awaitable[Any]]] = {
    AcceptSlots: accept_slots,
    AssignDriver: assign_driver,
}


# Claims fetch every result they act on, so their transactions run in pipeline mode.
PIPELINED = frozenset({AcceptSlots})


def bind(clock: Clock) -> CommandTable:
    """The handler table with this service's dependencies applied."""
    table = {kind: functools.partial(fn, clock) for kind, fn in HANDLERS.items()}
    return {kind: Pipelined(fn) if kind in PIPELINED else fn for kind, fn in table.items()}
