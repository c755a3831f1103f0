"""The acceptance service on one screen: which command runs which handler."""

from __future__ import annotations

import functools

from libs.events.bus import CommandTable
from libs.events.commands import AcceptSlots
from libs.runtime.clock import Clock
from services.acceptance.claim import accept_slots

HANDLERS = {
    AcceptSlots: accept_slots,
}


def bind(clock: Clock) -> CommandTable:
    """The handler table with this service's dependencies applied."""
    return {kind: functools.partial(fn, clock) for kind, fn in HANDLERS.items()}
