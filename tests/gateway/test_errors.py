"""Error responses the gateway gives on its own: 404, 405, 413, 422, 429, 503 (section 2)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.gateway.conftest import Gateway, StartGateway
from tests.gateway.helpers import error, valid_search
from tests.processes import free_port

ACTIVE = "/v1/customers/me/broadcasts/active"
LIMIT = 64 * 1024


async def test_unknown_route_is_404(api: httpx.AsyncClient) -> None:
    """A path no route serves is 404 not_found in the contract's error shape."""
    error(await api.get("/v1/nothing-here"), 404, "not_found")
    error(await api.get("/nowhere"), 404, "not_found")


async def test_wrong_method_is_405(api: httpx.AsyncClient) -> None:
    """A known path with a method it does not serve is 405 method_not_allowed with Allow."""
    response = await api.delete("/v1/broadcasts")
    error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["allow"]
    vehicle = await api.patch("/v1/transporters/me/vehicles/v1")
    error(vehicle, 405, "method_not_allowed")
    assert {"PUT", "DELETE"} <= {m.strip() for m in vehicle.headers["allow"].split(",")}


@pytest.mark.parametrize(
    "path",
    [
        "/v1/broadcasts/{}",
        "/v1/broadcasts/has%20space",
        "/v1/broadcasts/" + "x" * 65,
        "/v1/broadcasts/d%C3%A9j%C3%A0",
    ],
)
async def test_unknown_or_malformed_broadcast_id_is_404(
    api: httpx.AsyncClient, system: Gateway, path: str
) -> None:
    """An unknown broadcast id, or one that is not 1-64 of A-Za-z0-9_-, is 404."""
    url = path.format("unknown-broadcast")
    error(await api.get(url, headers=system.auth("customer")), 404, "not_found")


async def test_malformed_vehicle_id_is_404(api: httpx.AsyncClient, system: Gateway) -> None:
    """PUT of a vehicle whose id is not 1-64 of A-Za-z0-9_- is 404 (no command is sent)."""
    body = {"vehicleType": "open_17ft", "lat": 1, "lng": 2}
    url = "/v1/transporters/me/vehicles/bad.id"
    error(await api.put(url, json=body, headers=system.auth("transporter")), 404, "not_found")


async def test_body_over_64_kib_is_413(api: httpx.AsyncClient, system: Gateway) -> None:
    """A body whose Content-Length passes 64 KiB is 413 payload_too_large."""
    content = b"{" + b" " * LIMIT + b"}"
    response = await api.post(
        "/v1/broadcasts",
        content=content,
        headers={**system.auth("customer"), "Content-Type": "application/json"},
    )
    error(response, 413, "payload_too_large")


async def test_streamed_body_over_64_kib_is_413(api: httpx.AsyncClient, system: Gateway) -> None:
    """A chunked body (no Content-Length) that streams past 64 KiB is 413."""

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b" " * 4096

    response = await api.post("/v1/broadcasts", content=chunks(), headers=system.auth("customer"))
    assert "content-length" not in response.request.headers
    error(response, 413, "payload_too_large")


async def test_body_of_exactly_64_kib_is_read(api: httpx.AsyncClient, system: Gateway) -> None:
    """A body of exactly 64 KiB is within the limit (here refused only as invalid: 422)."""
    content = b"[" + b" " * (LIMIT - 2) + b"]"
    response = await api.post("/v1/broadcasts", content=content, headers=system.auth("customer"))
    error(response, 422, "invalid_request")


INVALID_SEARCHES: list[tuple[Any, str]] = [
    (valid_search(pickup={"lat": 91, "lng": 77.59}), "pickup.lat"),
    (valid_search(pickup={"lat": -90.5, "lng": 77.59}), "pickup.lat"),
    (valid_search(drop={"lat": 13, "lng": 180.01}), "drop.lng"),
    (valid_search(drop={"lat": 13, "lng": -181}), "drop.lng"),
    (valid_search(pickup={"lat": "12.9", "lng": 77.59}), "pickup.lat"),
    (valid_search(pickup={"lat": True, "lng": 77.59}), "pickup.lat"),
    (valid_search(pickup={"lng": 77.59}), "pickup.lat"),
    (valid_search(pickup={"lat": 1, "lng": 2, "altitude": 3}), "pickup.altitude"),
    (valid_search(extra=1), "extra"),
    (valid_search(trucks=[]), "trucks"),
    (valid_search(trucks=[{"vehicleType": f"t{i}", "quantity": 1} for i in range(11)]), "trucks"),
    (valid_search(trucks=[{"vehicleType": "open_17ft", "quantity": 0}]), "trucks[0].quantity"),
    (valid_search(trucks=[{"vehicleType": "open_17ft", "quantity": 21}]), "trucks[0].quantity"),
    (valid_search(trucks=[{"vehicleType": "open_17ft", "quantity": 1.5}]), "trucks[0].quantity"),
    (valid_search(trucks=[{"vehicleType": "Open-17", "quantity": 1}]), "trucks[0].vehicleType"),
    (valid_search(trucks=[{"vehicleType": "a" * 33, "quantity": 1}]), "trucks[0].vehicleType"),
    (valid_search(trucks=[{"vehicleType": "", "quantity": 1}]), "trucks[0].vehicleType"),
    (valid_search(trucks=[{"quantity": 1}]), "trucks[0].vehicleType"),
    (
        valid_search(
            trucks=[{"vehicleType": "a", "quantity": 1}, {"vehicleType": "a", "quantity": 2}]
        ),
        "trucks",
    ),
    (valid_search(note="n" * 501), "note"),
    (valid_search(note=5), "note"),
    ([valid_search()], "body"),
    ("just a string", "body"),
]


@pytest.mark.parametrize(("body", "field"), INVALID_SEARCHES)
async def test_invalid_search_is_422_naming_the_field(
    api: httpx.AsyncClient, system: Gateway, body: Any, field: str
) -> None:
    """An out-of-range, mistyped, missing or unknown field is 422 with that field in details."""
    response = await api.post("/v1/broadcasts", json=body, headers=system.auth("customer"))
    details = error(response, 422, "invalid_request")["details"]
    assert [d["field"] for d in details] == [field]
    assert all(isinstance(d["problem"], str) and d["problem"] for d in details)


@pytest.mark.parametrize("content", [b"", b"{", b'{"pickup": NaN}', b"\xff\xfe", b"{'a': 1}"])
async def test_malformed_json_is_422(
    api: httpx.AsyncClient, system: Gateway, content: bytes
) -> None:
    """A body that is not JSON is 422 invalid_request naming `body`."""
    response = await api.post("/v1/broadcasts", content=content, headers=system.auth("customer"))
    assert error(response, 422, "invalid_request")["details"][0]["field"] == "body"


async def test_number_too_large_for_a_float_is_422(api: httpx.AsyncClient, system: Gateway) -> None:
    """A coordinate that overflows to infinity (1e999) is 422, never stored."""
    content = b'{"pickup": {"lat": 1e999, "lng": 1}, "drop": {"lat": 1, "lng": 1}, "trucks": []}'
    response = await api.post("/v1/broadcasts", content=content, headers=system.auth("customer"))
    assert error(response, 422, "invalid_request")["details"][0]["field"] == "pickup.lat"


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/transporters/me/vehicles/v1", {"vehicleType": "x", "lat": 1}, "lng"),
        (
            "/v1/transporters/me/vehicles/v1",
            {"vehicleType": "X", "lat": 1, "lng": 1},
            "vehicleType",
        ),
        ("/v1/transporters/me/drivers/d1", {"name": "", "phone": "1"}, "name"),
        ("/v1/transporters/me/drivers/d1", {"name": "n" * 101, "phone": "1"}, "name"),
        ("/v1/transporters/me/drivers/d1", {"name": "Ravi", "phone": "1" * 33}, "phone"),
        ("/v1/transporters/me/drivers/d1", {"name": "Ravi"}, "phone"),
    ],
)
async def test_invalid_fleet_body_is_422(
    api: httpx.AsyncClient, system: Gateway, path: str, body: Any, field: str
) -> None:
    """Vehicle and driver registrations are validated before anything is sent."""
    response = await api.put(path, json=body, headers=system.auth("transporter"))
    assert error(response, 422, "invalid_request")["details"][0]["field"] == field


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"vehicleType": "open_17ft", "quantity": 0}, "quantity"),
        ({"vehicleType": "open_17ft", "quantity": 21}, "quantity"),
        ({"vehicleType": "open 17ft", "quantity": 1}, "vehicleType"),
        ({"quantity": 1}, "vehicleType"),
    ],
)
async def test_invalid_accept_body_is_422(
    api: httpx.AsyncClient, system: Gateway, body: Any, field: str
) -> None:
    """An accept by type needs a valid vehicleType and a quantity of 1-20."""
    url = "/v1/broadcasts/some-broadcast/accept"
    response = await api.post(url, json=body, headers=system.auth("transporter"))
    assert error(response, 422, "invalid_request")["details"][0]["field"] == field


async def test_cancel_reason_over_500_characters_is_422(
    api: httpx.AsyncClient, system: Gateway
) -> None:
    """A cancel reason longer than 500 characters is 422."""
    url = "/v1/broadcasts/some-broadcast/cancel"
    response = await api.post(url, json={"reason": "r" * 501}, headers=system.auth("customer"))
    assert error(response, 422, "invalid_request")["details"][0]["field"] == "reason"


async def test_request_id_is_echoed_or_generated(api: httpx.AsyncClient) -> None:
    """X-Request-ID given by the caller comes back; without one the gateway makes one."""
    given = await api.get("/health", headers={"X-Request-ID": "trace-123"})
    assert given.headers["x-request-id"] == "trace-123"
    made = await api.get(ACTIVE)
    assert len(made.headers["x-request-id"]) >= 16


async def test_metrics_histogram_has_route_templates(
    api: httpx.AsyncClient, system: Gateway
) -> None:
    """/metrics has the request latency histogram labelled by route template and status."""
    await api.get("/v1/broadcasts/some-id", headers=system.auth("customer"))
    text = (await api.get("/metrics")).text
    assert "weelo_gateway_request_seconds_bucket" in text
    assert 'route="/v1/broadcasts/{broadcast_id}"' in text
    assert 'status="404"' in text


async def test_rate_limit_is_429_with_retry_after(start_gateway: StartGateway) -> None:
    """Past RATE_LIMIT_PER_MINUTE a caller gets 429 rate_limited with Retry-After; others not."""
    gateway = start_gateway(RATE_LIMIT_PER_MINUTE="3")
    headers = gateway.auth("customer", "greedy")
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        for _ in range(3):
            assert (await client.get(ACTIVE, headers=headers)).status_code == 404
        limited = await client.get(ACTIVE, headers=headers)
        error(limited, 429, "rate_limited")
        assert int(limited.headers["retry-after"]) >= 1
        other = await client.get(ACTIVE, headers=gateway.auth("customer", "modest"))
        assert other.status_code == 404


async def test_unanswered_command_is_503(start_gateway: StartGateway) -> None:
    """A command no service answers within COMMAND_TIMEOUT_SECONDS is 503 unavailable."""
    gateway = start_gateway(COMMAND_TIMEOUT_SECONDS="1")
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        started = time.monotonic()
        response = await client.post(
            "/v1/broadcasts", json=valid_search(), headers=gateway.auth("customer")
        )
        error(response, 503, "unavailable")
        assert time.monotonic() - started < 5


async def test_redis_down_is_503(start_gateway: StartGateway) -> None:
    """With nothing listening at REDIS_URL, commands are 503 unavailable and /health names redis."""
    dead = f"redis://127.0.0.1:{free_port()}/0"
    gateway = start_gateway(healthy=False, REDIS_URL=dead)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        health = await client.get("/health")
        assert health.status_code == 503
        assert health.json()["checks"]["redis"] != "ok"
        calls = [
            client.post("/v1/broadcasts", json=valid_search(), headers=gateway.auth("customer")),
            client.put(
                "/v1/transporters/me/vehicles/v1",
                json={"vehicleType": "open_17ft", "lat": 1, "lng": 2},
                headers=gateway.auth("transporter"),
            ),
        ]
        for response in await asyncio.gather(*calls):
            error(response, 503, "unavailable")
