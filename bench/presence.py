"""`presence`: a driver toggles availability over HTTP; how soon its transporter's socket knows.

A real gateway, presence, broadcast (fleet registry) and fan-out (projector) process on a
scratch database; any of them may hold the outbox relay's lease. One transporter with 20
registered drivers holds a WebSocket on the gateway; drivers take turns to go online or offline
(`PUT /v1/drivers/me/availability`), one toggle at a time, 400 in all. Latency is from sending
the request to the transporter's socket receiving that change's `driver_status_changed`; the
HTTP reply's latency is shown beside it.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

import httpx
import uvloop
from websockets.asyncio.client import ClientConnection, connect

from bench.common import Figures, percentile, verdict
from bench.fanout import SECRET, Deployment, deployment, load_note
from libs.runtime.tokens import Role, issue

DRIVERS = 20
TOGGLES = 400


def auth(role: Role, sub: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue(SECRET, role=role, sub=sub, ttl_s=3600)}"}


async def register(api: httpx.AsyncClient, d: Deployment, transporter: str) -> list[str]:
    drivers = [f"bench-d{i}" for i in range(DRIVERS)]
    for driver_id in drivers:
        url = f"http://127.0.0.1:{d.port}/v1/transporters/me/drivers/{driver_id}"
        body = {"name": "Bench Driver", "phone": "+910000000000"}
        reply = await api.put(url, json=body, headers=auth("transporter", transporter))
        reply.raise_for_status()
    return drivers


async def frame_for(ws: ClientConnection, driver_id: str, online: bool) -> float:
    """Wait for the change of `driver_id` to `online`; when it arrived."""
    while True:
        data = json.loads(await asyncio.wait_for(ws.recv(), 10))["data"]
        if data["driverId"] == driver_id and data["online"] == online:
            return time.perf_counter()


async def toggles(d: Deployment) -> tuple[list[float], list[float]]:
    transporter, online = "bench-t", dict.fromkeys((f"bench-d{i}" for i in range(DRIVERS)), False)
    pushed, replied = [], []
    async with httpx.AsyncClient(timeout=15) as api:
        drivers = await register(api, d, transporter)
        ws = await connect(d.ws_url(), additional_headers=auth("transporter", transporter))
        for n in range(TOGGLES):
            driver_id = drivers[n % DRIVERS]
            online[driver_id] = not online[driver_id]
            url = f"http://127.0.0.1:{d.port}/v1/drivers/me/availability"
            started = time.perf_counter()
            arrival = asyncio.create_task(frame_for(ws, driver_id, online[driver_id]))
            reply = await api.put(
                url, json={"online": online[driver_id]}, headers=auth("driver", driver_id)
            )
            reply.raise_for_status()
            replied.append(time.perf_counter() - started)
            pushed.append(await arrival - started)
        await ws.close()
    return pushed, replied


def run() -> Figures:
    figures, load = Figures("presence", "make bench SCENARIOS=presence"), os.getloadavg()[0]
    with deployment(services=("broadcast", "presence", "fanout")) as d:
        pushed, replied = uvloop.run(toggles(d))
    figures.latency(f"toggle sent → transporter's socket has it ({TOGGLES} toggles)", pushed)
    figures.add("target: p99 under 100 ms", verdict(percentile(pushed, 99) < 0.1))
    figures.latency("toggle sent → HTTP reply", replied)
    figures.notes.append(
        "One toggle at a time from 20 drivers of one transporter. The path: gateway → "
        "presence service (command stream) → PostgreSQL → outbox relay → projector (in the "
        "fan-out) → inbox → pub/sub → socket. Every process, PostgreSQL and Redis share the "
        "machine."
    )
    figures.notes.append(load_note(load))
    return figures
