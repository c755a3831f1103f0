"""The presence service: driver availability and the heartbeat TTL (`weelo run presence`)."""

from __future__ import annotations

import asyncio

from libs.events.clock import utc_now
from libs.runtime.commands import run_commands
from libs.runtime.service import Resources, ServiceSpec
from services.presence.deps import PresenceDeps
from services.presence.handlers import HANDLERS
from services.presence.sweep import SweepConfig, Sweeper


async def commands(resources: Resources, stop: asyncio.Event) -> None:
    await run_commands(resources, HANDLERS, PresenceDeps(utc_now), stop)


async def sweep(resources: Resources, stop: asyncio.Event) -> None:
    settings = resources.settings
    sweeper = Sweeper(
        resources.pool,
        resources.redis,
        settings.redis_key_prefix,
        SweepConfig(ttl_s=settings.presence_ttl_seconds),
        utc_now,
    )
    await sweeper.run(stop)


SERVICE = ServiceSpec(name="presence", default_port=8104, tasks=(commands, sweep))
