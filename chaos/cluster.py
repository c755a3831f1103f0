"""The cluster under test: `copies` processes of every service `weelo run` knows, started
directly with subprocess on ports of their own, killed, frozen and restarted by the faults.

Each process is a slot (`gateway-0`, `timer-1`, ...); a restarted process keeps its slot's port.
Every process span (spawned, answering /health, ended) goes into the run log: the checker
computes from them when every timer was down, and the lease report maps holders to slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from chaos.config import SoakConfig
from chaos.records import ProcessSpan, RunLog
from libs.cli import SERVICES
from libs.local.probes import free_port

ROOT = Path(__file__).resolve().parent.parent
HEALTHY_WITHIN_S = 60.0
STOP_WITHIN_S = 15.0


def service_env(
    config: SoakConfig, database_url: str, redis_url: str, state: Path
) -> dict[str, str]:
    """What every process of the deployment reads; nothing of the harness's TEST_ variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEST_", "PYTEST_"))}
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        REDIS_KEY_PREFIX="chaos:",
        WEELO_STATE_DIR=str(state),
        JWT_SECRET=secrets.token_urlsafe(48),
        JWT_REFRESH_SECRET=secrets.token_urlsafe(48),
        BROADCAST_TIMEOUT_SECONDS=f"{config.broadcast_timeout_s:g}",
        PRESENCE_TTL_SECONDS=f"{config.presence_ttl_s:g}",
        LOG_LEVEL=config.log_level,
    )
    env.pop("WEELO_SECRETS_ID", None)
    return env


@dataclass
class Slot:
    service: str
    index: int
    port: int
    env: dict[str, str]
    logs: Path
    proc: subprocess.Popen[bytes] | None = None
    span: ProcessSpan | None = None
    busy: bool = False  # a fault is acting on it

    @property
    def name(self) -> str:
        return f"{self.service}-{self.index}"

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/health"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def spawn(self, log: RunLog) -> None:
        port_var = "GATEWAY_PORT" if self.service == "gateway" else "HEALTH_PORT"
        with open(self.logs / f"{self.name}.log", "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "libs.cli", "run", self.service],
                cwd=ROOT,
                env={**self.env, port_var: str(self.port), "DB_POOL_SIZE": self._pool()},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.span = ProcessSpan(
            slot=self.name, service=self.service, pid=self.proc.pid, started=time.time()
        )
        log.processes.append(self.span)

    def _pool(self) -> str:
        return self.env["CHAOS_GATEWAY_POOL" if self.service == "gateway" else "CHAOS_POOL"]

    def ended(self) -> None:
        if self.span is not None and self.span.ended is None:
            self.span.ended = time.time()


@dataclass
class Cluster:
    slots: list[Slot]
    log: RunLog
    gateways: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, config: SoakConfig, env: Mapping[str, str], logs: Path, log: RunLog) -> Cluster:
        logs.mkdir(parents=True, exist_ok=True)
        base = {
            **env,
            "CHAOS_GATEWAY_POOL": str(config.gateway_pool_size),
            "CHAOS_POOL": str(config.service_pool_size),
        }
        slots = [
            Slot(service, i, free_port(), base, logs)
            for service in SERVICES
            for i in range(config.copies)
        ]
        gateways = [f"127.0.0.1:{s.port}" for s in slots if s.service == "gateway"]
        return cls(slots, log, gateways)

    async def start(self) -> None:
        """Spawn every process at once, then wait until each answers /health."""
        for slot in self.slots:
            slot.spawn(self.log)
        results = await asyncio.gather(*(self.wait_healthy(s) for s in self.slots))
        failed = [s.name for s, ok in zip(self.slots, results, strict=True) if not ok]
        if failed:
            raise RuntimeError(f"did not become healthy: {', '.join(failed)}")

    async def wait_healthy(self, slot: Slot, within: float = HEALTHY_WITHIN_S) -> bool:
        """Poll the slot's /health until 200 (respawning a process that died meanwhile)."""
        deadline = time.monotonic() + within
        async with httpx.AsyncClient(timeout=1.0, trust_env=False) as client:
            while time.monotonic() < deadline:
                if slot.proc is not None and slot.proc.poll() is not None:
                    slot.ended()
                    await asyncio.sleep(0.5)
                    slot.spawn(self.log)
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(slot.health_url)).status_code == 200:
                        if slot.span is not None and slot.span.healthy is None:
                            slot.span.healthy = time.time()
                        return True
                await asyncio.sleep(0.1)
        return False

    def kill(self, slot: Slot) -> None:
        if slot.proc is not None and slot.proc.poll() is None:
            slot.proc.send_signal(signal.SIGKILL)
            slot.proc.wait()
        slot.ended()

    def signal(self, slot: Slot, sig: signal.Signals) -> None:
        if slot.proc is not None and slot.proc.poll() is None:
            slot.proc.send_signal(sig)

    def stop_all(self) -> None:
        """SIGCONT and SIGTERM every process, then wait for each (killing one that overstays)."""
        running = [s for s in self.slots if s.proc is not None and s.proc.poll() is None]
        for slot in running:
            self.signal(slot, signal.SIGCONT)
            self.signal(slot, signal.SIGTERM)
        for slot in running:
            assert slot.proc is not None
            try:
                slot.proc.wait(STOP_WITHIN_S)
            except subprocess.TimeoutExpired:
                slot.proc.kill()
                slot.proc.wait()
            slot.ended()

    def slot_of_pid(self, pid: int) -> str | None:
        for span in self.log.processes:
            if span.pid == pid:
                return span.slot
        return None
