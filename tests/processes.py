"""Running services as real processes in tests, and waiting until they answer /health."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from libs.runtime.probes import free_port
from libs.runtime.probes import healthy as probe

__all__ = [
    "DB_POOL_SIZE",
    "ROOT",
    "Service",
    "environment",
    "free_port",
    "healthy",
    "services",
    "wait_healthy",
]

ROOT = Path(__file__).resolve().parent.parent
# The connection budget of every service process the suite starts: a dozen may run at once (a
# module's cluster beside the gateway tests' shared system) against a PostgreSQL whose
# max_connections (100) other runs share.
DB_POOL_SIZE = "6"


def healthy(port: int, path: str = "/health") -> bool:
    return probe(f"http://127.0.0.1:{port}{path}", timeout=1)


def wait_healthy(
    port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0, path: str = "/health"
) -> None:
    """Wait until `path` (by default /health) answers 200 on `port`."""
    deadline = time.monotonic() + timeout
    while not healthy(port, path):
        if proc.poll() is not None:
            raise RuntimeError(f"service on port {port} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"service on port {port}: {path} not 200 within {timeout} s")
        time.sleep(0.05)


class Service:
    """One `weelo run SERVICE` process with its own health port."""

    def __init__(self, name: str, env: dict[str, str], port: int | None = None) -> None:
        self.name, self.port = name, port or free_port()
        key = "GATEWAY_PORT" if name == "gateway" else "HEALTH_PORT"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "libs.runtime.cli", "run", name],
            env={**env, key: str(self.port)},
            cwd=ROOT,
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@contextlib.contextmanager
def services(names: Sequence[str], env: dict[str, str]) -> Iterator[dict[str, Service]]:
    """Start each named service, wait for every /health, stop them all afterwards."""
    started: dict[str, Service] = {}
    try:
        for name in names:
            key = name if name not in started else f"{name}-{len(started)}"
            started[key] = Service(name, env)
        for service in started.values():
            wait_healthy(service.port, service.proc)
        yield started
    finally:
        for service in started.values():
            service.stop()


def environment(base: dict[str, str], **overrides: str) -> dict[str, str]:
    return {
        **base,
        **overrides,
        "PYTHONPATH": str(ROOT),
        "LOG_LEVEL": os.environ.get("TEST_LOG_LEVEL", "WARNING"),
    }
