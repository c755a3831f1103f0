"""The gateway's access log: one JSON line at INFO per request and per WebSocket handshake, read
from a real gateway process's stdout (issue 13, item 11)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from libs.runtime.tokens import InvalidToken, Principal, issue, recording_principals, verify
from tests.gateway.conftest import Gateway, StartGateway, new_id, started
from tests.processes import free_port

ACTIVE = "/v1/customers/me/broadcasts/active"
FIELDS = {"method", "route", "status", "duration_ms", "principal", "request_id"}


@pytest.fixture(scope="module")
def gateway(
    service_env_module: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """A gateway of this module's own, logging at INFO to a file the tests read."""
    logs = tmp_path_factory.mktemp("access-log")
    with started({**service_env_module, "LOG_LEVEL": "INFO"}, logs) as running:
        yield running


def log_lines(gateway: Gateway) -> list[dict[str, Any]]:
    """Every JSON line the gateway process wrote so far."""
    lines = []
    for raw in gateway.procs[-1].log.read_text(errors="replace").splitlines():
        try:
            lines.append(json.loads(raw))
        except ValueError:
            continue
    return lines


def access_lines(gateway: Gateway, rid: str) -> list[dict[str, Any]]:
    return [x for x in log_lines(gateway) if x.get("event") == "access" and x["request_id"] == rid]


def line_of(gateway: Gateway, rid: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """The access line of request `rid`, once the gateway wrote it."""
    deadline = time.monotonic() + timeout_s
    while not (found := access_lines(gateway, rid)):
        if time.monotonic() > deadline:
            pytest.fail(f"no access line for {rid} within {timeout_s} s")
        time.sleep(0.05)
    return found[0]


def rid() -> str:
    return f"test-{uuid.uuid4().hex}"


def checked(line: dict[str, Any], method: str, route: str, status: int) -> dict[str, Any] | None:
    """Assert the line's fields; return its principal."""
    assert set(line) >= FIELDS, line
    assert line["level"] == "info"
    assert (line["method"], line["route"], line["status"]) == (method, route, status), line
    assert isinstance(line["duration_ms"], int | float) and 0 <= line["duration_ms"] < 10_000
    assert line["correlation_id"] == line["request_id"]
    principal: dict[str, Any] | None = line["principal"]
    return principal


async def test_an_api_call_logs_its_route_template_status_principal_and_request_id(
    gateway: Gateway,
) -> None:
    """An authenticated call is one line: its method, route template (not the path with ids),
    status, duration, the token's role and subject (a wrong role's 403 too), and the
    X-Request-ID it sent."""
    sub, broadcast_id, ids = new_id("t"), new_id("b"), (rid(), rid())
    headers = {**gateway.auth("transporter", sub), "X-Request-ID": ids[0]}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        got = await client.get(f"/v1/broadcasts/{broadcast_id}", headers=headers)
        assert got.status_code == 404 and got.headers["x-request-id"] == ids[0]
        wrong = {**gateway.auth("transporter", sub), "X-Request-ID": ids[1]}
        assert (await client.get(ACTIVE, headers=wrong)).status_code == 403
    line = line_of(gateway, ids[0])
    principal = checked(line, "GET", "/v1/broadcasts/{broadcast_id}", 404)
    assert principal == {"role": "transporter", "sub": sub}
    assert broadcast_id not in json.dumps(line)
    wrong_role = checked(line_of(gateway, ids[1]), "GET", ACTIVE, 403)
    assert wrong_role == {"role": "transporter", "sub": sub}


async def test_refused_and_unrouted_requests_are_logged_without_a_principal(
    gateway: Gateway,
) -> None:
    """A 401 (no token, a forged one) and a path no route names are logged too, with no
    principal and route `unmatched` for the unknown path."""
    forged = issue("not-the-gateway-key-" + "x" * 32, role="driver", sub="d-forged", ttl_s=600)
    ids = (rid(), rid(), rid())
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        await client.get(ACTIVE, headers={"X-Request-ID": ids[0]})
        bearer = {"Authorization": f"Bearer {forged}", "X-Request-ID": ids[1]}
        await client.get(ACTIVE, headers=bearer)
        await client.get(f"/v1/nothing/{new_id()}", headers={"X-Request-ID": ids[2]})
    assert checked(line_of(gateway, ids[0]), "GET", ACTIVE, 401) is None
    assert checked(line_of(gateway, ids[1]), "GET", ACTIVE, 401) is None
    assert checked(line_of(gateway, ids[2]), "GET", "unmatched", 404) is None


async def test_a_refresh_names_the_refresh_tokens_principal_and_no_token_is_logged(
    gateway: Gateway,
) -> None:
    """POST /v1/auth/refresh logs the principal of the refresh token; neither it nor the tokens
    issued in exchange appear anywhere in the gateway's log."""
    sub, request = new_id("d"), rid()
    refresh = issue(gateway.refresh_secret, role="driver", sub=sub, ttl_s=600)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        answer = await client.post(
            "/v1/auth/refresh", json={"refreshToken": refresh}, headers={"X-Request-ID": request}
        )
    assert answer.status_code == 200
    principal = checked(line_of(gateway, request), "POST", "/v1/auth/refresh", 200)
    assert principal == {"role": "driver", "sub": sub}
    text = gateway.procs[-1].log.read_text()
    for token in (refresh, answer.json()["accessToken"], answer.json()["refreshToken"]):
        assert token not in text


async def test_a_websocket_handshake_is_one_line(gateway: Gateway) -> None:
    """An accepted upgrade is one line with status 101 and the principal (however long the
    socket stays open), a refused one its 401; the `?token=` never reaches the log."""
    sub, accepted, refused, after = new_id("c"), rid(), rid(), rid()
    token = gateway.token("customer", sub)
    ws_url = gateway.url.replace("http://", "ws://") + "/v1/ws"
    async with connect(f"{ws_url}?token={token}", additional_headers={"X-Request-ID": accepted}):
        principal = checked(line_of(gateway, accepted), "GET", "/v1/ws", 101)
    assert principal == {"role": "customer", "sub": sub}
    with pytest.raises(InvalidStatus):
        async with connect(f"{ws_url}?token=bad", additional_headers={"X-Request-ID": refused}):
            pass
    assert checked(line_of(gateway, refused), "GET", "/v1/ws", 401) is None
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        await client.get("/v1/nothing", headers={"X-Request-ID": after})
    line_of(gateway, after)  # written after everything before it: the socket's close included
    assert len(access_lines(gateway, accepted)) == 1
    assert token not in gateway.procs[-1].log.read_text()


async def test_successful_probes_are_not_logged_and_uvicorn_logs_no_access_line(
    gateway: Gateway,
) -> None:
    """/livez, /health and /metrics that answer 200 write no access line, and uvicorn's own
    access log (`"GET /path HTTP/1.1" 200`) stays off."""
    probes, after = {path: rid() for path in ("/livez", "/health", "/metrics")}, rid()
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        for path, request in probes.items():
            assert (await client.get(path, headers={"X-Request-ID": request})).status_code == 200
        await client.get("/v1/nothing", headers={"X-Request-ID": after})
    line_of(gateway, after)
    assert all(not access_lines(gateway, request) for request in probes.values())
    assert not [x for x in log_lines(gateway) if "HTTP/1.1" in str(x.get("event"))]


async def test_a_failing_health_probe_is_logged(start_gateway: StartGateway) -> None:
    """A /health that answers 503 (Redis unreachable) is logged: it says why the load balancer
    took the task out."""
    dead = f"redis://127.0.0.1:{free_port()}/0"
    gateway = start_gateway(healthy=False, REDIS_URL=dead, LOG_LEVEL="INFO")
    request = rid()
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        assert (await client.get("/health", headers={"X-Request-ID": request})).status_code == 503
    assert checked(line_of(gateway, request), "GET", "/health", 503) is None


def test_verify_records_the_principal_only_inside_recording_principals() -> None:
    """tokens.verify reports the principal it accepted to the enclosing recording_principals
    (the access log's source), and nothing when the token is refused or none is open."""
    key = "test-recording-key-" + "k" * 32
    token = issue(key, role="driver", sub="d-1", ttl_s=60)
    verify(token, [key])  # outside: nowhere to record, no error
    with recording_principals() as seen:
        verify(token, [key])
        with pytest.raises(InvalidToken):
            verify(token, ["another-key-" + "o" * 32])
    assert seen == [Principal(sub="d-1", role="driver")]
