"""A real system for the screens (gateway, broadcast, acceptance, presence, fanout) with the demo
fleet registered by `weelo demo`, and Debian's chromium driven by Playwright.

Playwright cannot download its own browser here: it launches `/usr/bin/chromium` from the
`chromium` package (`.ci/run` installs it when missing).
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Playwright, sync_playwright

from tests.gateway.conftest import Gateway, started
from tests.keys import forget_keys
from tests.processes import DB_POOL_SIZE, run_weelo

CHROMIUM = Path(os.environ.get("WEELO_CHROMIUM", "/usr/bin/chromium"))
SERVICES = ("broadcast", "acceptance", "presence", "fanout")
LINK = re.compile(r"^\s+(customer|transporter|driver)\s+(\S+)\s+(http\S+)$", re.MULTILINE)


@dataclass(frozen=True)
class DemoRun:
    output: str
    links: dict[str, str]  # sub -> its screen's link


@pytest.fixture(scope="module")
def screens_system(
    module_database: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """The services the screens use, on this module's own database and Redis prefix."""
    tmp = tmp_path_factory.mktemp("screens-system")
    env = system_env(module_database, redis_url, tmp / "state")
    with started(env, tmp, SERVICES) as gateway:
        yield gateway
    forget_keys(redis_url, env["REDIS_KEY_PREFIX"])


def system_env(database_url: str, redis_url: str, state: Path) -> dict[str, str]:
    """The environment of a system of this package's own: its database, Redis prefix, keys."""
    run = uuid.uuid4().hex[:8]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEST_", "PYTEST_"))}
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        REDIS_KEY_PREFIX=f"test-screens-{run}:",
        WEELO_STATE_DIR=str(state),
        JWT_SECRET=f"screens-access-secret-{run}-" + "a" * 48,
        JWT_REFRESH_SECRET=f"screens-refresh-secret-{run}-" + "r" * 48,
        DB_POOL_SIZE=DB_POOL_SIZE,
        LOG_LEVEL="INFO",  # the access lines, which the tests read for leaked tokens
    )
    return env


def run_demo(gateway: Gateway) -> DemoRun:
    """`weelo demo --url` against `gateway`, to its end; its output and links by user."""
    done = run_weelo(gateway.env, "demo", "--url", gateway.url)
    assert done.returncode == 0, done.stderr
    return DemoRun(done.stdout, {sub: url for _role, sub, url in LINK.findall(done.stdout)})


@pytest.fixture(scope="module")
def demo(screens_system: Gateway) -> DemoRun:
    """The demo fleet registered once for the module, and the links it printed."""
    return run_demo(screens_system)


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    """Debian's chromium, headless (a missing binary fails the test, saying how to install)."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (or set WEELO_CHROMIUM)")
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
    yield browser
    browser.close()
