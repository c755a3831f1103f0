"""`/livez` checks no dependency (CONTRACT.md section 9): with PostgreSQL unreachable a
service is not ready (`/health` is 503) but is alive, so the orchestrator does not kill it; and
asked to stop then, it stops at once rather than after its 20 s shutdown bound."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.processes import Service, environment, free_port, wait_healthy

SERVICES = ("gateway", "broadcast", "acceptance", "timer", "presence", "fanout")
# Waiting on nothing, a service stops in well under a second; its tasks' waits for a pooled
# connection (30 s by default) must not hold the stop up to SHUTDOWN_TIMEOUT_S (20 s).
STOPS_WITHIN_S = 3.0


@pytest.fixture
def without_postgres(
    service_env: dict[str, str], request: pytest.FixtureRequest
) -> Iterator[Service]:
    """The test's service, its DATABASE_URL pointing at a port nothing listens on."""
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/weelo"
    started = Service(request.param, environment(service_env, DATABASE_URL=dead))
    try:
        wait_healthy(started.port, started.proc, path="/livez")
        yield started
    finally:
        started.stop()


@pytest.mark.parametrize("without_postgres", ["gateway", "broadcast"], indirect=True)
async def test_livez_is_200_while_health_is_503_without_postgres(without_postgres: Service) -> None:
    """With PostgreSQL unreachable, /livez answers 200 {"status": "ok"}; /health 503 names it."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{without_postgres.port}") as client:
        live = await client.get("/livez")
        health = await client.get("/health", timeout=10.0)
    assert (live.status_code, live.json()) == (200, {"status": "ok"})
    assert health.status_code == 503
    assert health.json()["checks"]["postgres"] != "ok"
    assert health.json()["checks"]["redis"] == "ok"
    assert without_postgres.proc.poll() is None


@pytest.mark.parametrize("without_postgres", SERVICES, indirect=True)
def test_a_service_without_postgres_stops_within_3_s_of_sigterm(without_postgres: Service) -> None:
    """With PostgreSQL unreachable, SIGTERM ends the service within 3 s, exit code 0: none of
    its background tasks sits out a connection wait that PostgreSQL can never end."""
    time.sleep(1.0)  # let every task reach its first wait for a connection
    asked = time.monotonic()
    code = without_postgres.stop(timeout=30.0)
    took = time.monotonic() - asked
    assert (code, took < STOPS_WITHIN_S) == (0, True), f"exit {code} after {took:.2f} s"
