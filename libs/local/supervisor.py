"""`weelo up`: run the whole system in the foreground as one child process per service.

Refuses at once, in one line naming them, when any of its ports is taken (so that an answer on
one is never another program's). Starts embedded PostgreSQL and Redis when `DATABASE_URL` /
`REDIS_URL` are unset, migrates, runs every service with explicit ports, says so (a framed block)
once every `/health` answers 200 from a child still running, and on SIGINT,
SIGTERM or SIGHUP stops the services (SIGTERM, then SIGKILL after 30 s), then the servers.
Children run in their own sessions, so a Ctrl-C reaches only this process, which stops them in
order; on Linux they also get SIGTERM if this process dies without doing so.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from libs.local.embedded import (
    EmbeddedServerError,
    die_with_parent,
    embedded_postgres,
    embedded_redis,
)
from libs.local.probes import healthy, port_free
from libs.runtime.settings import SettingsError, local_secret, state_dir

HEALTH_OFFSETS = {
    "broadcast": 101,
    "acceptance": 102,
    "timer": 103,
    "presence": 104,
    "fanout": 105,
}
STOP_TIMEOUT_S = 30.0
HEALTH_POLL_S = 0.1
SLOW_START_S = 30.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass(frozen=True)
class Planned:
    name: str
    service: str
    port: int

    def environ(self, base: Mapping[str, str]) -> dict[str, str]:
        port = "GATEWAY_PORT" if self.service == "gateway" else "HEALTH_PORT"
        return {**base, port: str(self.port)}


@dataclass(frozen=True)
class Child:
    planned: Planned
    process: asyncio.subprocess.Process


def run_system(environ: Mapping[str, str], gateways: int) -> int:
    """Run every service until a stop signal (0) or an unexpected child exit (1); 2 at once when
    one of its ports is taken."""
    env = {**environ, "WEELO_STATE_DIR": str(state_dir(environ).resolve())}
    planned = plan(env, gateways)
    taken = [p for p in planned if not port_free(_bind_host(env), p.port)]
    if taken:
        _say(ports_in_use(taken, _bind_host(env)))
        return 2
    with _restoring_signals(), contextlib.ExitStack() as stack:
        _interrupt_on_stop_signals()
        try:
            notes = _attach_servers(env, stack)
        except EmbeddedServerError as e:
            _say(str(e))
            return 1
        _migrate(env["DATABASE_URL"])
        _create_local_secrets(env)
        status = asyncio.run(_supervise(env, planned, notes))
        _interrupt_on_stop_signals()  # the loop reset them; the servers still have to stop
        return status


def plan(env: Mapping[str, str], gateways: int) -> list[Planned]:
    """The processes to run: `gateways` gateways on GATEWAY_PORT+i, the rest on base+101..105."""
    try:
        base = int(env.get("GATEWAY_PORT") or 8000)
    except ValueError as e:
        raise SettingsError(f"GATEWAY_PORT must be a number, got {env['GATEWAY_PORT']!r}") from e
    if not 0 < base <= 65535 - 105 or gateways > 100:
        raise SettingsError("GATEWAY_PORT+105 must be a port and --gateways at most 100")
    names = [f"gateway-{i + 1}" if gateways > 1 else "gateway" for i in range(gateways)]
    planned = [Planned(name, "gateway", base + i) for i, name in enumerate(names)]
    return planned + [Planned(s, s, base + offset) for s, offset in HEALTH_OFFSETS.items()]


def ports_in_use(taken: list[Planned], host: str) -> str:
    """One line naming the taken ports, whose they would have been, and the variable to set."""
    named = ", ".join(f"{p.port} ({p.name})" for p in taken)
    verb = f"port {named} is" if len(taken) == 1 else f"ports {named} are"
    return (
        f"{verb} in use on {host} by another program, perhaps another weelo up: stop it, or set "
        "GATEWAY_PORT to another base port (the other services listen on GATEWAY_PORT+101..105)"
    )


def _bind_host(env: Mapping[str, str]) -> str:
    return env.get("GATEWAY_HOST") or "127.0.0.1"


@contextlib.contextmanager
def _restoring_signals() -> Iterator[None]:
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _interrupt_on_stop_signals() -> None:
    """Outside the event loop (servers starting or stopping) SIGTERM and SIGHUP act as Ctrl-C."""

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, interrupt)


def _attach_servers(env: dict[str, str], stack: contextlib.ExitStack) -> list[str]:
    """Start the embedded servers for whichever URL is unset; describe where each server is."""
    state = Path(env["WEELO_STATE_DIR"])
    notes = []
    for var, name, folder, start in (
        ("DATABASE_URL", "PostgreSQL", "postgres", embedded_postgres),
        ("REDIS_URL", "Redis", "redis", embedded_redis),
    ):
        if env.get(var):
            notes.append(f"{name} from {var}")
            continue
        data = state / folder
        env[var] = stack.enter_context(start(data))
        notes.append(f"{name} embedded (data in {data})")
    return notes


def _migrate(database_url: str) -> None:
    import psycopg

    from libs.runtime.postgres import application_name, conninfo
    from libs.schema.migrate import migrate

    try:
        migrate(conninfo(database_url, application_name("migrate")))
    except psycopg.OperationalError as e:
        raise SettingsError(f"cannot reach the database to migrate it: {e}") from e


def _create_local_secrets(env: Mapping[str, str]) -> None:
    """Generate the local JWT keys before any child starts, so no two children race to."""
    for name in ("JWT_SECRET", "JWT_REFRESH_SECRET"):
        if not env.get(name):
            local_secret(Path(env["WEELO_STATE_DIR"]), name.lower())


async def _supervise(env: Mapping[str, str], planned: list[Planned], notes: list[str]) -> int:
    """Start the children, wait for a stop request or a crash, stop them all; the exit status."""
    children: list[Child] = []
    stop = _stop_on_signals(children)
    crashed: list[Child] = []
    try:
        for item in planned:
            children.append(await _spawn(item, env))
        announcer = asyncio.create_task(_announce(children, env, notes))
        crashed = await _until_stop_or_exit(stop, children)
        announcer.cancel()
    finally:
        clean = await _stop_all(children)
    return 1 if crashed or not clean else 0


def _stop_on_signals(children: list[Child]) -> asyncio.Event:
    """SIGINT, SIGTERM or SIGHUP asks for a clean stop; a second one kills the services now."""
    stop = asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            _say(f"{sig.name} again: killing the services")
            for child in children:
                with contextlib.suppress(ProcessLookupError):
                    child.process.kill()
        else:
            _say(f"{sig.name}: stopping")
            stop.set()

    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)
    return stop


async def _spawn(item: Planned, env: Mapping[str, str]) -> Child:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "libs.cli",
        "run",
        item.service,
        env=item.environ(env),
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=die_with_parent(signal.SIGTERM),
    )
    return Child(item, process)


async def _until_stop_or_exit(stop: asyncio.Event, children: list[Child]) -> list[Child]:
    """Wait for a stop request or a child's exit; return the children that exited unasked."""
    exits = {asyncio.ensure_future(c.process.wait()): c for c in children}
    stopping = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait([stopping, *exits], return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if stop.is_set():
        return []
    crashed = [exits[task] for task in done if task in exits]
    for child in crashed:
        _say(f"{child.planned.name} exited with status {child.process.returncode}; stopping")
    return crashed


async def _stop_all(children: list[Child]) -> bool:
    """SIGTERM every child, SIGKILL those still running after 30 s; whether all exited with 0."""
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            child.process.terminate()
    waits = [asyncio.ensure_future(c.process.wait()) for c in children]
    _, late = await asyncio.wait(waits, timeout=STOP_TIMEOUT_S) if waits else (set(), set())
    for child in children:
        if child.process.returncode is None:
            _say(f"{child.planned.name} did not stop in {STOP_TIMEOUT_S:.0f} s: killing it")
            child.process.kill()
    await asyncio.gather(*late)
    return all(c.process.returncode == 0 for c in children)


async def _announce(children: list[Child], env: Mapping[str, str], notes: list[str]) -> None:
    """Print the banner once every service's /health answers 200 (or say which are slow)."""
    host = _probe_host(env)
    running = {c.planned.name: c.process for c in children}
    pending = {c.planned.name: f"http://{host}:{c.planned.port}/health" for c in children}
    slow_at = time.monotonic() + SLOW_START_S
    while True:
        answers = await asyncio.gather(*(asyncio.to_thread(healthy, u) for u in pending.values()))
        # An answer counts only while our own child runs: its port was free when it started.
        pending = {
            n: u
            for (n, u), ok in zip(pending.items(), answers, strict=True)
            if not (ok and running[n].returncode is None)
        }
        if not pending:
            break
        if time.monotonic() > slow_at:
            _say(f"still waiting for /health of {', '.join(pending)}")
            slow_at = float("inf")
        await asyncio.sleep(HEALTH_POLL_S)
    print(framed(_banner(children, host, notes), sys.stderr.isatty()), file=sys.stderr, flush=True)


def _banner(children: list[Child], host: str, notes: list[str]) -> str:
    gateways = [c.planned for c in children if c.planned.service == "gateway"]
    others = [c.planned for c in children if c.planned.service != "gateway"]
    urls = ", ".join(f"http://{host}:{p.port}" for p in gateways)
    health = ", ".join(f"{p.name} :{p.port}" for p in others)
    return (
        f"weelo is up: gateway {urls}\n  health (GET /health): {health}\n"
        f"  {'; '.join(notes)}\n  Ctrl-C stops everything."
    )


def framed(text: str, terminal: bool) -> str:
    """`text` between two rules and blank lines, bold green on a terminal: the one block a person
    looks for among the services' log lines."""
    rule = "=" * 72
    if terminal:
        text = f"\033[1;32m{text}\033[0m"
    return f"\n{rule}\n{text}\n{rule}\n"


def _probe_host(env: Mapping[str, str]) -> str:
    """Where to reach the services: GATEWAY_HOST, or loopback when that is a wildcard."""
    host = env.get("GATEWAY_HOST") or "127.0.0.1"
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"[{host}]" if ":" in host else host


def _say(message: str) -> None:
    print(f"weelo: {message}", file=sys.stderr, flush=True)
