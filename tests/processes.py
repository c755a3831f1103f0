"""Running services as real processes in tests, and waiting until they answer /health: the one
place that knows how the suite starts `weelo` (and the free port each process listens on)."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from libs.local.probes import free_port
from libs.local.probes import healthy as probe
from libs.local.supervisor import HEALTH_OFFSETS

__all__ = [
    "DB_POOL_SIZE",
    "ROOT",
    "Service",
    "environment",
    "free_port",
    "healthy",
    "run_weelo",
    "services",
    "start_service",
    "stop_all",
    "terminate",
    "wait_healthy",
    "weelo_command",
]

ROOT = Path(__file__).resolve().parent.parent
# The connection budget of every service process the suite starts: a dozen may run at once (a
# module's cluster beside the gateway tests' shared system) against a PostgreSQL whose
# max_connections (100) other runs share.
DB_POOL_SIZE = "6"


def weelo_command(*args: str) -> list[str]:
    """The command line of `weelo ARGS...` from this checkout, on the suite's interpreter (run it
    with `cwd=ROOT`)."""
    return [sys.executable, "-m", "libs.cli", *args]


def run_weelo(
    env: Mapping[str, str], *args: str, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run `weelo ARGS...` to its end; its exit code and output (as text)."""
    return subprocess.run(
        weelo_command(*args),
        env=dict(env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_service(
    name: str, env: Mapping[str, str], log: Path | None = None
) -> subprocess.Popen[bytes]:
    """`weelo run NAME` in the background; its output (stdout and stderr) appended to `log` when
    one is given, else where the test's own goes."""
    if log is None:
        return subprocess.Popen(weelo_command("run", name), env=dict(env), cwd=ROOT)
    with open(log, "ab") as out:
        return subprocess.Popen(
            weelo_command("run", name),
            env=dict(env),
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def terminate(
    proc: subprocess.Popen[bytes], timeout: float = 30.0, sig: int = signal.SIGTERM
) -> int:
    """Send `sig` unless the process has exited, wait up to `timeout` s for it and kill it if it
    overstays; its exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


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
        self.proc = start_service(name, {**env, key: str(self.port)})

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        return terminate(self.proc, timeout, sig)


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
        stop_all(service.proc for service in started.values())


def stop_all(running: Iterable[subprocess.Popen[bytes]], timeout: float = 30.0) -> None:
    """SIGTERM every process of `running` at once (once: a second SIGTERM forces a service to
    exit), then wait for each, killing any still there after `timeout` s: they stop side by
    side, as an orchestrator stops a deployment, not one after another."""
    procs = list(running)
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def environment(base: dict[str, str], **overrides: str) -> dict[str, str]:
    return {
        **base,
        **overrides,
        "PYTHONPATH": str(ROOT),
        "LOG_LEVEL": os.environ.get("TEST_LOG_LEVEL", "WARNING"),
    }


def free_base_port(gateways: int = 2) -> int:
    """A GATEWAY_PORT whose gateway ports and base+101..105 are all free right now, below the
    kernel's ephemeral range: there the port of any other test's outgoing connection (or bind
    to port 0) could take one between this check and `weelo up` binding it."""
    top = ephemeral_floor() - 1 - max(HEALTH_OFFSETS.values())
    for _ in range(200):
        base = random.randrange(10000, top)
        ports = [base + i for i in range(gateways)] + [base + o for o in HEALTH_OFFSETS.values()]
        if all(port_free(p) for p in ports):
            return base
    raise RuntimeError("no free port range found")


def ephemeral_floor() -> int:
    """The lowest port the kernel hands out for outgoing connections and binds to port 0."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def health_urls(base: int, gateways: int = 1) -> list[str]:
    """The /health URL of every process `weelo up` starts from GATEWAY_PORT `base`."""
    ports = [base + i for i in range(gateways)] + [base + o for o in HEALTH_OFFSETS.values()]
    return [f"http://127.0.0.1:{p}/health" for p in ports]
