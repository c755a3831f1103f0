"""Running a service's command table: a consumer-group runner on its command stream."""

from __future__ import annotations

import asyncio
from typing import TypeVar

from libs.events.commands import commands_stream
from libs.events.executor import command_handler, command_key
from libs.events.handlers import CommandHandlers
from libs.events.runner import RunnerConfig, StreamRunner
from libs.events.streams import dead_letter_stream
from libs.runtime.service import Resources

D = TypeVar("D")

# Commands expire after a few seconds, so a dead consumer's commands are claimed soon.
COMMAND_RUNNER = RunnerConfig(batch_size=200, block_ms=1000, claim_idle_ms=5_000)


async def run_commands(
    resources: Resources, table: CommandHandlers[D], deps: D, stop: asyncio.Event
) -> None:
    """Execute commands sent to this service, by `table` with `deps`, until `stop` is set."""
    prefix = resources.settings.redis_key_prefix
    runner = StreamRunner(
        resources.redis,
        stream=commands_stream(prefix, resources.service),
        group=resources.service,
        consumer=resources.instance,
        handler=command_handler(table, deps, resources.pool, resources.redis),
        dead_letter=dead_letter_stream(prefix),
        config=COMMAND_RUNNER,
        key=command_key,
    )
    await runner.run(stop)
