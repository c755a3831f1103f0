"""The acceptance service on one screen: which command runs which handler."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from libs.events.bus import Batched, CommandFn, CommandTable
from libs.events.commands import AcceptSlots, AssignDriver, Command
from libs.runtime.clock import Clock
from services.acceptance.assign import assign_driver
from services.acceptance.claim import accept_many, accept_slots

HANDLERS: dict[type[Command], Callable[..., Awaitable[Any]]] = {
    AcceptSlots: accept_slots,
    AssignDriver: assign_driver,
}


# Claims of one broadcast read in one batch are decided in one transaction (pipelined: they
# fetch every result they act on).
BATCHED: dict[type[Command], Callable[..., Awaitable[Any]]] = {AcceptSlots: accept_many}


def bind(clock: Clock) -> CommandTable:
    """The handler table with this service's dependencies applied."""
    table: dict[type[Command], CommandFn] = {
        kind: functools.partial(fn, clock) for kind, fn in HANDLERS.items()
    }
    for kind, many in BATCHED.items():
        table[kind] = Batched(table[kind], functools.partial(many, clock))
    return table
