"""`weelo up` as a real process (healthy services, clean stops, crashes, kills, its output on a
terminal) and the embedded servers it starts when no DATABASE_URL / REDIS_URL is given."""

from __future__ import annotations

import contextlib
import os
import pty
import select
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
import redis

from libs.local.embedded import EmbeddedServerError, embedded_postgres, embedded_redis
from tests.processes import ROOT, free_base_port, health_urls, weelo_command

UP_WITHIN_S = 20.0
STOP_WITHIN_S = 40.0

pytestmark = [
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc"),
    pytest.mark.process,  # `weelo up` and embedded servers, started by the tests themselves
]


Proc = tuple[int, str]  # pid and start time: a pid reused later is another process


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat fields from the state on (state, ppid, ..., starttime at 19)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def descendants(pid: int) -> set[Proc]:
    """Every live process below `pid` (children in other sessions included), from /proc."""
    procs = {int(p.name): _stat(int(p.name)) for p in Path("/proc").glob("[0-9]*")}
    parents = {child: int(f[1]) for child, f in procs.items() if f and f[0] != "Z"}
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return {(p, procs[p][19]) for p in found}


def running(proc: Proc) -> bool:
    fields = _stat(proc[0])
    return bool(fields) and fields[0] != "Z" and fields[19] == proc[1]


def left_running(procs: set[Proc]) -> list[Proc]:
    return [p for p in procs if running(p)]


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll `condition` until it holds; return the seconds it took; fail after `timeout_s`."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout_s:
            pytest.fail(f"{what}: not within {timeout_s} s")
        time.sleep(0.05)
    return time.monotonic() - start


def all_healthy(urls: list[str]) -> bool:
    try:
        return all(httpx.get(u, timeout=2, trust_env=False).status_code == 200 for u in urls)
    except httpx.HTTPError:
        return False


def nothing_listens(urls: list[str]) -> bool:
    return not any(_answers(u) for u in urls)


def _answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=1, trust_env=False)
    except httpx.HTTPError:
        return False
    return True


class Up:
    """A running `weelo up` whose combined output goes to a log file."""

    def __init__(self, env: dict[str, str], log: Path, *args: str) -> None:
        self.log = log
        with open(log, "ab") as output:
            self.process = subprocess.Popen(
                weelo_command("up", *args),
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=output,
            )
        self.seen: set[Proc] = set()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_healthy(self, urls: list[str]) -> float:
        """Seconds until every url answered 200; fails early if `weelo up` exits."""

        def ready() -> bool:
            if self.process.poll() is not None:
                pytest.fail(f"weelo up exited {self.process.returncode}:\n{self.output()}")
            self.seen |= descendants(self.process.pid)
            return all_healthy(urls)

        took = wait_for(ready, UP_WITHIN_S, "every /health at 200")
        self.seen |= descendants(self.process.pid)
        return took

    def stop(self, sig: signal.Signals = signal.SIGINT) -> int:
        self.process.send_signal(sig)
        return self.process.wait(STOP_WITHIN_S)

    def kill_everything(self) -> None:
        self.seen |= descendants(self.process.pid)
        self.process.kill()
        for pid, _ in left_running(self.seen):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait()


@contextlib.contextmanager
def weelo_up(env: dict[str, str], log: Path, *args: str) -> Iterator[Up]:
    up = Up(env, log, *args)
    try:
        yield up
    finally:
        up.kill_everything()


def embedded_env(tmp_path: Path, base: int) -> dict[str, str]:
    drop = ("TEST_", "PYTEST_", "DATABASE_URL", "REDIS_URL", "JWT_", "WEELO_SECRETS_ID")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(WEELO_STATE_DIR=str(tmp_path / "state"), GATEWAY_PORT=str(base))
    return env


def test_up_with_given_servers_is_healthy_and_stops_on_sigint(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    """Given server URLs, every /health is 200 within 20 s; SIGINT exits 0 and leaves no child."""
    base = free_base_port()
    urls = health_urls(base)
    with weelo_up({**service_env, "GATEWAY_PORT": str(base)}, tmp_path / "up.log") as up:
        took = up.wait_healthy(urls)
        wait_for(lambda: "weelo is up" in up.output(), 5, "the banner")
        assert len(up.seen) >= 5, up.seen
        assert up.stop() == 0, up.output()
        assert not left_running(up.seen)
        assert nothing_listens(urls)
    print(f"all /health at 200 after {took:.2f} s (given servers)")


def test_up_with_two_gateways_answers_on_both_ports(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    """`weelo up --gateways 2` serves /health on GATEWAY_PORT and on GATEWAY_PORT+1."""
    base = free_base_port(gateways=2)
    urls = health_urls(base, gateways=2)
    env = {**service_env, "GATEWAY_PORT": str(base)}
    with weelo_up(env, tmp_path / "up.log", "--gateways", "2") as up:
        up.wait_healthy(urls)
        assert up.stop(signal.SIGTERM) == 0, up.output()
        assert not left_running(up.seen)


def test_up_without_urls_runs_embedded_servers_and_stops_cleanly(tmp_path: Path) -> None:
    """With neither URL set, embedded PostgreSQL and Redis back every service; SIGINT stops all."""
    base = free_base_port()
    urls = health_urls(base)
    with weelo_up(embedded_env(tmp_path, base), tmp_path / "up.log") as up:
        took = up.wait_healthy(urls)
        wait_for(lambda: "weelo is up" in up.output(), 5, "the banner")
        assert "PostgreSQL embedded" in up.output() and "Redis embedded" in up.output()
        assert (tmp_path / "state" / "postgres" / "data" / "PG_VERSION").exists()
        assert up.stop() == 0, up.output()
        assert not left_running(up.seen)
        assert nothing_listens(urls)
    print(f"all /health at 200 after {took:.2f} s (embedded servers)")


def test_up_stops_everything_and_fails_when_a_service_dies(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    """A service killed from outside makes `weelo up` stop the others and exit non-zero."""
    base = free_base_port()
    with weelo_up({**service_env, "GATEWAY_PORT": str(base)}, tmp_path / "up.log") as up:
        up.wait_healthy(health_urls(base))
        timer = _service_pid(up, "timer")
        os.kill(timer, signal.SIGKILL)
        assert up.process.wait(STOP_WITHIN_S) != 0
        assert "timer exited" in up.output()
        assert not left_running(up.seen)


def test_killed_up_leaves_nothing_running_and_the_next_start_works(tmp_path: Path) -> None:
    """After SIGKILL of `weelo up` its services and servers exit; the next start reuses the data."""
    base = free_base_port()
    env = embedded_env(tmp_path, base)
    with weelo_up(env, tmp_path / "first.log") as first:
        first.wait_healthy(health_urls(base))
        first.process.kill()
        first.process.wait()
        wait_for(lambda: not left_running(first.seen), 30, "orphans to exit")
    with weelo_up(env, tmp_path / "second.log") as second:
        second.wait_healthy(health_urls(base))
        assert second.stop() == 0, second.output()


def _service_pid(up: Up, service: str) -> int:
    for pid, _ in descendants(up.process.pid):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if cmdline[-2:] == [service.encode(), b""]:
            return pid
    raise AssertionError(f"no {service} process under {up.process.pid}")


def test_embedded_servers_start_under_a_path_too_long_for_a_unix_socket(tmp_path: Path) -> None:
    """Embedded PostgreSQL and Redis start and answer even when their data path is very long."""
    deep = tmp_path.joinpath(*["a-rather-long-directory-name"] * 4)
    with embedded_postgres(deep / "postgres") as pg_url, embedded_redis(deep / "redis") as r_url:
        with psycopg.connect(pg_url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        client = redis.Redis.from_url(r_url)
        assert client.ping()
        client.close()


def test_embedded_server_refuses_a_data_dir_already_in_use(tmp_path: Path) -> None:
    """A second embedded Redis over a directory another one is using fails at once, clearly."""
    first, second = embedded_redis(tmp_path / "redis"), embedded_redis(tmp_path / "redis")
    with first, pytest.raises(EmbeddedServerError, match="in use"), second:
        pass


def test_up_in_a_terminal_logs_readably_and_frames_the_ready_line(
    service_env: dict[str, str],
) -> None:
    """`weelo up` on a terminal: its services' lines are readable text (none is JSON) and the
    ready line stands between two rules, bold, after the services' start-up lines."""
    base = free_base_port()
    env = {**service_env, "GATEWAY_PORT": str(base), "TERM": "xterm"}
    leader, follower = pty.openpty()
    up = subprocess.Popen(
        weelo_command("up"),
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
    )
    os.close(follower)
    output = b""
    try:
        deadline = time.monotonic() + 60
        while b"Ctrl-C stops everything" not in output and time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 1)
            if ready:
                try:
                    output += os.read(leader, 65536)
                except OSError:  # EIO: `weelo up` exited and closed the terminal
                    break
    finally:
        up.send_signal(signal.SIGINT)
        code = up.wait(60)
        os.close(leader)
    text = output.decode(errors="replace")
    assert code == 0, text
    assert "weelo is up" in text, text
    lines = [line for line in text.splitlines() if line.strip()]
    assert not any(line.lstrip().startswith("{") for line in lines), text
    assert "service_started" in text
    rule = "=" * 72
    block = text[text.index("weelo is up") - 200 :]
    assert f"{rule}\r\n\x1b[1;32mweelo is up" in block, repr(block)
