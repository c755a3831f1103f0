"""The fan-out service: domain events become the users' WebSocket messages in their inboxes.

Any number of copies may run; the holder of the projector's lease projects, the others stand
by (`projector.py`). It serves `/health`, `/livez` and `/metrics` on `HEALTH_PORT`. Its heap is
tended like the gateway's (`libs/runtime/heap.py`), since the projector keeps thousands of
broadcasts' state; the fanout benchmark's runs have not shown how much that changes its tail.
"""

import asyncio

from libs.runtime.heap import tend_heap
from libs.runtime.service import Resources, ServiceSpec
from services.fanout.projector import RECORD_CONNECTIONS, run_projector


async def heap(_resources: Resources, stop: asyncio.Event) -> None:
    await tend_heap(stop)


SERVICE = ServiceSpec(
    name="fanout",
    default_port=8105,
    tasks=(run_projector, heap),
    dedicated_connections=RECORD_CONNECTIONS,
)
