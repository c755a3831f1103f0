"""The acceptance service: claims of truck requests, driver assignment (`weelo run acceptance`)."""

from __future__ import annotations

import asyncio

from libs.runtime.clock import utc_now
from libs.runtime.commands import run_commands
from libs.runtime.service import Resources, ServiceSpec
from services.acceptance.handlers import bind


async def commands(resources: Resources, stop: asyncio.Event) -> None:
    await run_commands(resources, bind(utc_now), stop)


SERVICE = ServiceSpec(name="acceptance", default_port=8102, tasks=(commands,))
