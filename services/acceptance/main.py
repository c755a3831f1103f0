"""The acceptance service: claims of truck requests, driver assignment (`weelo run acceptance`)."""

from __future__ import annotations

import asyncio

from libs.events.clock import utc_now
from libs.runtime.commands import run_commands
from libs.runtime.service import Resources, ServiceSpec
from services.acceptance.deps import AcceptanceDeps
from services.acceptance.handlers import HANDLERS


async def commands(resources: Resources, stop: asyncio.Event) -> None:
    await run_commands(resources, HANDLERS, AcceptanceDeps(utc_now), stop)


SERVICE = ServiceSpec(name="acceptance", default_port=8102, tasks=(commands,))
