"""The broadcast service: search, cancel, expiry and the fleet registry (`weelo run broadcast`)."""

from __future__ import annotations

import asyncio

from libs.runtime.commands import run_commands
from libs.runtime.service import Resources, ServiceSpec
from services.broadcast.deps import BroadcastDeps
from services.broadcast.handlers import HANDLERS


async def commands(resources: Resources, stop: asyncio.Event) -> None:
    settings = resources.settings
    deps = BroadcastDeps(
        timeout_s=settings.broadcast_timeout_seconds, radius_km=settings.broadcast_radius_km
    )
    await run_commands(resources, HANDLERS, deps, stop)


SERVICE = ServiceSpec(name="broadcast", default_port=8101, tasks=(commands,))
