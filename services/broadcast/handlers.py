"""The broadcast service on one screen: which command runs which handler."""

from __future__ import annotations

from libs.events.commands import (
    CancelBroadcast,
    CreateBroadcast,
    RegisterDriver,
    RegisterVehicle,
    RemoveVehicle,
)
from libs.events.handlers import CommandHandlers
from services.broadcast.deps import BroadcastDeps
from services.broadcast.fleet import register_driver, register_vehicle, remove_vehicle
from services.broadcast.lifecycle import cancel_broadcast
from services.broadcast.search import create_broadcast

HANDLERS = (
    CommandHandlers[BroadcastDeps]()
    .on(RegisterVehicle, register_vehicle)
    .on(RemoveVehicle, remove_vehicle)
    .on(RegisterDriver, register_driver)
    .on(CreateBroadcast, create_broadcast)
    .on(CancelBroadcast, cancel_broadcast)
)
