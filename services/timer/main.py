"""The timer service: durable broadcast expiry (`weelo run timer`)."""

from __future__ import annotations

import asyncio

from libs.events.clock import utc_now
from libs.events.dispatch import event_handler, stream_key
from libs.events.runner import StreamRunner
from libs.events.streams import dead_letter_stream, events_stream
from libs.runtime.service import Resources, ServiceSpec
from services.timer.active import ActiveBroadcasts
from services.timer.deps import TimerDeps
from services.timer.handlers import HANDLERS
from services.timer.scheduler import Scheduler
from services.timer.store import TimerStore


async def timers(resources: Resources, stop: asyncio.Event) -> None:
    prefix = resources.settings.redis_key_prefix
    store = TimerStore(resources.redis, prefix)
    scheduler = Scheduler(resources.pool, store, utc_now)
    deps = TimerDeps(ActiveBroadcasts(resources.pool), store, scheduler.wake)
    runner = StreamRunner(
        resources.redis,
        stream=events_stream(prefix, "broadcast"),
        group="timer",
        consumer=resources.instance,
        handler=event_handler(HANDLERS, deps),
        dead_letter=dead_letter_stream(prefix),
        key=stream_key,
    )
    await asyncio.gather(scheduler.run(stop), runner.run(stop))


SERVICE = ServiceSpec(name="timer", default_port=8103, tasks=(timers,))
