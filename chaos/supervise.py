"""What an orchestrator does for the cluster: a process that exited by itself (not killed by a
fault) is logged with the last error it wrote, and started again 2 s later on its port."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

from chaos.cluster import Cluster, Slot
from chaos.records import ProcessExit

RESTART_AFTER_S = 2.0
SUPERVISE_EVERY_S = 0.2


async def supervise(cluster: Cluster, stop: asyncio.Event) -> None:
    """Until `stop`: restart exited processes (slots under a fault are the fault's business)."""
    restarts: set[asyncio.Task[None]] = set()
    while not stop.is_set():
        for slot in cluster.slots:
            if slot.busy or slot.proc is None or slot.proc.poll() is None:
                continue
            slot.busy = True
            task = asyncio.create_task(_restart_exited(cluster, slot))
            restarts.add(task)
            task.add_done_callback(restarts.discard)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SUPERVISE_EVERY_S)
    for task in list(restarts):
        task.cancel()
    await asyncio.gather(*restarts, return_exceptions=True)


async def _restart_exited(cluster: Cluster, slot: Slot) -> None:
    assert slot.proc is not None and slot.span is not None
    if slot.span.ended is None:
        slot.span.ended = time.time() - SUPERVISE_EVERY_S  # it exited since the last look
    error = last_error(slot.logs / f"{slot.name}.log")
    cluster.log.exits.append(
        ProcessExit(
            slot=slot.name,
            pid=slot.proc.pid,
            at=slot.span.ended,
            code=slot.proc.returncode,
            last_error=error,
        )
    )
    try:
        await asyncio.sleep(RESTART_AFTER_S)
        slot.spawn(cluster.log)
        await cluster.wait_healthy(slot)
    finally:
        slot.busy = False


def last_error(path: Path) -> str:
    """The last error or warning line of a process's log, shortened, for the report."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        if '"level": "error"' in line or "Traceback" in line:
            return line[:300]
    return lines[-1][:300] if lines else ""
