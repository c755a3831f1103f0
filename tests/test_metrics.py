"""Every service's /metrics carries the figures the guarantees are judged by (contract section
9): which role it holds, its pool's use, the outbox, each group's lag and pending entries, dead
letters and command timeouts (a real service process on a database of its own)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.processes import Service, environment, services

SEEN_WITHIN_S = 15.0


@pytest.fixture(scope="module")
def database_url(module_database: str) -> str:
    """The only relay on this database is the one under test, so it holds the relay's lease."""
    return module_database


@pytest.fixture(scope="module")
def broadcast(service_env_module: dict[str, str]) -> Iterator[Service]:
    with services(["broadcast"], environment(service_env_module)) as running:
        yield running["broadcast"]


def _sample(text: str, name: str) -> float | None:
    """The value of the first sample of `name` (with any labels) in a Prometheus text page."""
    for line in text.splitlines():
        if line.startswith(name) and line[len(name)] in " {":
            return float(line.rsplit(" ", 1)[1])
    return None


def _metrics_with(port: int, *names: str) -> str:
    """The /metrics page once it has a sample of every one of `names`."""
    deadline = time.monotonic() + SEEN_WITHIN_S
    while True:
        page = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        missing = [n for n in names if _sample(page, n) is None]
        if not missing:
            return page
        assert time.monotonic() < deadline, f"never on /metrics: {missing}"
        time.sleep(0.1)


def test_a_service_reports_its_roles_pool_outbox_and_streams(broadcast: Service) -> None:
    """The broadcast service, the only one on its database, holds the relay's lease and says
    so, with its pool's size and use, the outbox backlog, and its command group's lag."""
    page = _metrics_with(
        broadcast.port,
        'weelo_lease_held{role="relay"}',
        "weelo_db_pool_max",
        "weelo_outbox_rows",
        "weelo_outbox_oldest_age_seconds",
        "weelo_stream_pending_entries",
        "weelo_stream_lag_entries",
        "weelo_dead_letter_entries",
    )
    assert _sample(page, 'weelo_lease_held{role="relay"}') == 1.0
    assert _sample(page, 'weelo_lease_acquisitions_total{role="relay"}') == 1.0
    assert _sample(page, "weelo_db_pool_max") == 2.0  # DB_POOL_SIZE 6 less relay 3, probe 1
    assert 'group="broadcast"' in page
    for name in ("weelo_dead_letters_total", "weelo_command_timeouts_total"):
        assert f"# TYPE {name} counter" in page


def test_metrics_answer_only_at_the_path_spelled_out(broadcast: Service) -> None:
    """`/metrics` percent-encoded (which a load balancer's path rule does not match, and the
    server decodes) is 404, so blocking the plain path at the load balancer blocks them all."""
    base = f"http://127.0.0.1:{broadcast.port}"
    assert httpx.get(f"{base}/metrics", timeout=5).status_code == 200
    for spelled in ("/%6Detrics", "/metric%73", "/%6d%65%74%72%69%63%73"):
        url = httpx.URL(base).copy_with(raw_path=spelled.encode())
        assert httpx.get(url, timeout=5).status_code == 404, spelled
