"""The broadcast service on one screen: which command runs which handler."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from libs.events.bus import CommandTable
from libs.events.commands import (
    CancelBroadcast,
    Command,
    CreateBroadcast,
    RegisterDriver,
    RegisterVehicle,
    RemoveVehicle,
)
from services.broadcast.deps import BroadcastDeps
from services.broadcast.fleet import register_driver, register_vehicle, remove_vehicle
from services.broadcast.lifecycle import cancel_broadcast
from services.broadcast.search import create_broadcast

NEEDS_DEPS: dict[type[Command], Callable[..., Awaitable[Any]]] = {
    CreateBroadcast: create_broadcast,
    CancelBroadcast: cancel_broadcast,
}

HANDLERS: dict[type[Command], Callable[..., Awaitable[Any]]] = {
    RegisterVehicle: register_vehicle,
    RemoveVehicle: remove_vehicle,
    RegisterDriver: register_driver,
    **NEEDS_DEPS,
}


def bind(deps: BroadcastDeps) -> CommandTable:
    """The handler table with this service's dependencies applied."""
    return {
        kind: functools.partial(fn, deps) if kind in NEEDS_DEPS else fn
        for kind, fn in HANDLERS.items()
    }
