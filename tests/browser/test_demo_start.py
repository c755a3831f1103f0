"""`weelo demo --start`, what `make demo` runs: with nothing answering it starts `weelo up` in
the background before registering the fleet; with the system running it starts nothing."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import httpx
import pytest

from libs.local.probes import healthy
from tests.browser.conftest import LINK, system_env
from tests.keys import forget_keys
from tests.processes import free_base_port, health_urls, run_weelo

pytestmark = [pytest.mark.process, pytest.mark.timeout(300)]
STOP_WITHIN_S = 40.0


def nothing_listens(urls: list[str]) -> bool:
    return not any(answers(url) for url in urls)


def answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=1, trust_env=False)
    except httpx.HTTPError:
        return False
    return True


def stop_background_system(pid: int, urls: list[str]) -> None:
    """SIGTERM the `weelo up` that the demo left running; wait until none of it answers."""
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_WITHIN_S
    while not nothing_listens(urls):
        assert time.monotonic() < deadline, "the background system did not stop"
        time.sleep(0.2)


def test_demo_start_runs_the_system_when_none_answers_and_reuses_it_after(
    module_database: str, redis_url: str, tmp_path: Path
) -> None:
    """The first `weelo demo --start` starts `weelo up` in the background (every service then
    answers) and prints the links; the second finds it running, starts nothing, prints the
    same users' links."""
    base = free_base_port()
    env = {**system_env(module_database, redis_url, tmp_path / "state"), "GATEWAY_PORT": str(base)}
    urls = health_urls(base)
    first = run_weelo(env, "demo", "--start", timeout=240)
    started = re.search(r"in the background \(pid (\d+)\)", first.stderr)
    try:
        assert first.returncode == 0, first.stderr
        assert started, first.stderr
        assert all(healthy(url) for url in urls)  # the demo returned once all answered
        second = run_weelo(env, "demo", "--start")
        assert second.returncode == 0, second.stderr
        assert "starting the system" not in second.stderr
        users = [sub for _role, sub, _url in LINK.findall(first.stdout)]
        assert users == [sub for _role, sub, _url in LINK.findall(second.stdout)]
        assert users == [
            "demo-customer",
            "demo-transporter-1",
            "demo-transporter-2",
            "demo-driver-1",
        ]
    finally:
        if started:
            stop_background_system(int(started.group(1)), urls)
        forget_keys(redis_url, env["REDIS_KEY_PREFIX"])


def test_demo_without_start_says_what_to_do_when_nothing_answers(tmp_path: Path) -> None:
    """Without `--start`, a gateway that does not answer is one line naming `make run`."""
    base = free_base_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEST_", "PYTEST_"))}
    env.update(WEELO_STATE_DIR=str(tmp_path / "state"), JWT_SECRET="x" * 40)
    done = run_weelo(env, "demo", "--url", f"http://127.0.0.1:{base}")
    assert done.returncode == 1
    assert "nothing answers" in done.stderr and "make run" in done.stderr
    assert done.stdout == ""
