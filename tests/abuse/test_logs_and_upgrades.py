"""Logs and request heads against real gateway processes (issue 11, items 1, 7 and 11).

No log line holds a credential (CONTRACT.md section 2), however the token came; a request head
over the limits in docs/operations.md is answered 414 or 431 at once and one that never
completes 408 after the header timeout; a refused WebSocket upgrade is logged at INFO at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from libs.runtime.tokens import Role, issue
from tests.gateway.conftest import Gateway, new_id, started
from tests.gateway.helpers import PICKUP, search, vehicle_type
from tests.realtime.sockets import Socket

HEADER_TIMEOUT_S = 1.0  # the module's gateway: HTTP_HEADER_TIMEOUT_SECONDS
ANSWER_WITHIN_S = 5.0  # "at once": far below any client's patience, far above a loaded machine
MAX_TARGET = 8000  # docs/operations.md: a request target (path and query) of at most 8000 bytes
WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="


@pytest.fixture(scope="module")
def gateway_settings() -> dict[str, str]:
    """The module's gateway has a header timeout of one second."""
    return {"HTTP_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT_S)}


def port_of(gateway: Gateway) -> int:
    return int(gateway.url.rsplit(":", 1)[1])


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def error_code(self) -> str:
        assert self.headers.get("content-type") == "application/json", self.headers
        return str(json.loads(self.body)["error"]["code"])


async def exchange(port: int, *chunks: bytes, within: float = ANSWER_WITHIN_S) -> Answer:
    """Send `chunks` on a new connection; the answer's status, headers and body, read within
    `within` seconds (a TimeoutError when the server never answers)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        with contextlib.suppress(ConnectionError):  # the server may answer before the end
            for chunk in chunks:
                writer.write(chunk)
                await writer.drain()
        async with asyncio.timeout(within):
            return await read_answer(reader)
    finally:
        writer.close()


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in filter(None, lines):
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Answer(int(status_line.split(" ")[1]), headers, body)


def request(target: str, *headers: str, method: str = "GET") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", *headers, "", ""]
    return "\r\n".join(lines).encode()


def upgrade(target: str, *headers: str) -> bytes:
    """A WebSocket upgrade request for `target`."""
    return request(
        target,
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {WS_KEY}",
        "Sec-WebSocket-Version: 13",
        *headers,
    )


async def closed_by_server(port: int, data: bytes, within: float = ANSWER_WITHIN_S) -> bytes:
    """Send `data`, then everything the server sends until it closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(within):
            return await reader.read()
    finally:
        writer.close()


# Item 7: a head over the limits is answered at once.


async def test_upgrade_with_long_request_line_is_414(gateway: Gateway) -> None:
    """A WebSocket upgrade whose request target is over 8000 bytes (a valid token in it) is
    answered 414 `uri_too_long` at once, and the connection closed."""
    token = gateway.token("customer")
    target = f"/v1/ws?token={token}&pad={'x' * 9000}"
    answer = await exchange(port_of(gateway), upgrade(target))
    assert answer.status == 414
    assert answer.error_code() == "uri_too_long"
    assert answer.headers["connection"] == "close"


async def test_request_with_long_target_is_414(gateway: Gateway) -> None:
    """A plain request whose target is over 8000 bytes, whole or trickled in pieces, is 414
    `uri_too_long` before it reaches any route."""
    target = f"/v1/broadcasts/{'b' * 9000}"
    whole = await exchange(port_of(gateway), request(target, *auth(gateway)))
    assert (whole.status, whole.error_code()) == (414, "uri_too_long")
    data = request(target, *auth(gateway))
    pieces = [data[i : i + 1000] for i in range(0, len(data), 1000)]
    trickled = await exchange(port_of(gateway), *pieces)
    assert (trickled.status, trickled.error_code()) == (414, "uri_too_long")


LARGE_HEADS = {
    "one header of 9,000 bytes": (f"X-Pad: {'a' * 9000}",),
    "a cookie of 9,000 bytes": (f"Cookie: c={'a' * 9000}",),
    "twenty headers of 1,000 bytes": tuple(f"X-Pad-{i}: {'a' * 1000}" for i in range(20)),
    "101 small headers": tuple(f"X-N-{i}: {i}" for i in range(101)),
}


@pytest.mark.parametrize("headers", LARGE_HEADS.values(), ids=LARGE_HEADS.keys())
@pytest.mark.parametrize("kind", ["upgrade", "request"])
async def test_large_head_is_431(gateway: Gateway, kind: str, headers: tuple[str, ...]) -> None:
    """A head with a header field over 8000 bytes, more than 100 fields or over 16 KiB in all
    is answered 431 `headers_too_large` at once, an upgrade as well as a plain request."""
    token = gateway.token("customer")
    data = (
        upgrade(f"/v1/ws?token={token}", *headers)
        if kind == "upgrade"
        else request("/v1/customers/me/broadcasts/active", *auth(gateway), *headers)
    )
    answer = await exchange(port_of(gateway), data)
    assert (answer.status, answer.error_code()) == (431, "headers_too_large")
    assert answer.headers["connection"] == "close"


async def test_endless_header_line_is_431(gateway: Gateway) -> None:
    """A header line that never ends is answered 431 once it passes the limit, in one write
    or in many, instead of being buffered without bound."""
    start_of_head = b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Endless: "
    in_one = await exchange(port_of(gateway), start_of_head + b"a" * 65536)
    assert (in_one.status, in_one.error_code()) == (431, "headers_too_large")
    in_many = await exchange(port_of(gateway), start_of_head, *[b"a" * 2048] * 32)
    assert (in_many.status, in_many.error_code()) == (431, "headers_too_large")


async def test_upgrade_websockets_cannot_parse_is_400(gateway: Gateway) -> None:
    """An upgrade that passes the HTTP parser but not websockets' handshake parser (a
    `Transfer-Encoding` on it) is answered 400 with the error body at once, not left hanging."""
    token = gateway.token("customer")
    answer = await exchange(
        port_of(gateway), upgrade(f"/v1/ws?token={token}", "Transfer-Encoding: chunked")
    )
    assert (answer.status, answer.error_code()) == (400, "bad_request")
    assert answer.headers["connection"] == "close"


async def test_head_within_limits_is_served(gateway: Gateway) -> None:
    """A request target of 8000 bytes and a head of 15 KiB are served as before, an upgrade
    included: the limits refuse only what is over them."""
    port = port_of(gateway)
    target = "/livez?pad="
    served = await exchange(port, request(target + "x" * (MAX_TARGET - len(target))))
    assert served.status == 200, served
    padding = tuple(f"X-Pad-{i}: {'a' * 900}" for i in range(16))
    assert (await exchange(port, request("/livez", *padding))).status == 200
    token = gateway.token("customer")
    target = f"/v1/ws?token={token}&pad="
    socket = await Socket.open(
        gateway.url.replace("http", "ws", 1) + target + "x" * (MAX_TARGET - len(target)),
        additional_headers={"X-Pad": "a" * 7000},
    )
    await socket.send({"type": "ping"})
    assert await socket.count(1) == [{"type": "pong"}]
    await socket.close()


async def test_incomplete_head_is_408_after_the_header_timeout(gateway: Gateway) -> None:
    """A head still incomplete after the header timeout (here one second) is answered 408
    `request_timeout` and the connection closed; one arriving byte by byte is no exception."""
    port = port_of(gateway)
    began = time.monotonic()
    answer = await exchange(port, b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    assert time.monotonic() - began >= HEADER_TIMEOUT_S * 0.9
    assert (answer.status, answer.error_code()) == (408, "request_timeout")
    assert answer.headers["connection"] == "close"
    assert await trickled_answer(port) == 408


async def trickled_answer(port: int) -> int:
    """Send a head a byte at a time, each byte well within the timeout; the answer's status."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        answer = asyncio.create_task(read_answer(reader))
        async with asyncio.timeout(ANSWER_WITHIN_S):
            for byte in request("/livez", "X-Slow: " + "s" * 200):
                if answer.done():
                    break
                writer.write(bytes([byte]))
                await asyncio.wait({answer}, timeout=HEADER_TIMEOUT_S / 10)
            return (await answer).status
    finally:
        writer.close()


async def test_silent_connection_is_closed_after_the_header_timeout(gateway: Gateway) -> None:
    """A connection that never sends a byte is closed without an answer once the header
    timeout passes; one idle after a response stays open for the keep-alive time instead."""
    port = port_of(gateway)
    assert await closed_by_server(port, b"") == b""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(2):
            writer.write(request("/livez"))
            async with asyncio.timeout(ANSWER_WITHIN_S):
                assert (await read_answer(reader)).status == 200
            await asyncio.sleep(HEADER_TIMEOUT_S * 2)  # idle: what this test is about
        assert not reader.at_eof()
    finally:
        writer.close()


def auth(gateway: Gateway) -> tuple[str]:
    return (f"Authorization: Bearer {gateway.token('customer')}",)


# Item 11: a refused upgrade is no error.


async def test_refused_upgrades_log_at_info_at_most(
    service_env_module: dict[str, str], tmp_path: Path
) -> None:
    """Upgrades refused for no token, a forged token, an expired one or a refresh token (in
    the header and in `?token=`) get 401 and leave no log line above INFO in the gateway's
    whole log."""
    with started({**service_env_module, "LOG_LEVEL": "INFO"}, tmp_path) as gateway:
        refused = refused_tokens(gateway)
        port = port_of(gateway)
        attempts = [upgrade("/v1/ws")]
        for token in refused.values():
            attempts.append(upgrade(f"/v1/ws?token={token}"))
            attempts.append(upgrade("/v1/ws", f"Authorization: Bearer {token}"))
        for attempt in attempts:
            answer = await exchange(port, attempt)
            assert (answer.status, answer.error_code()) == (401, "unauthorized")
    lines = log_lines(gateway.procs[-1].log)
    assert sum("WebSocket /v1/ws" in line for line in lines) >= len(attempts)
    loud = [line for line in lines if level_of(line) not in {"debug", "info"}]
    assert loud == [], "\n".join(loud)


def refused_tokens(gateway: Gateway) -> dict[str, str]:
    sub = new_id("c")
    return {
        "forged": issue("not-the-gateway-secret-" + "f" * 32, role="customer", sub=sub, ttl_s=60),
        "expired": issue(gateway.access_secret, role="customer", sub=sub, ttl_s=-60),
        "refresh": issue(gateway.refresh_secret, role="customer", sub=sub, ttl_s=600),
    }


def log_lines(path: Path) -> list[str]:
    return path.read_text(errors="replace").splitlines()


def level_of(line: str) -> str:
    try:
        record = json.loads(line)
    except ValueError:
        return "unstructured"
    return str(record.get("level", "none")) if isinstance(record, dict) else "unstructured"


# Item 1: no log line holds a credential.


@dataclass
class Story:
    """Who did what in a whole story, and every credential it used on the way."""

    gateway: Gateway
    api: httpx.AsyncClient
    credentials: dict[str, str] = field(default_factory=dict)
    sockets: list[Socket] = field(default_factory=list)

    def token(self, role: Role, sub: str) -> str:
        token = self.gateway.token(role, sub)
        self.credentials[f"access token of {role} {sub}"] = token
        return token

    def auth(self, role: Role, sub: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(role, sub)}"}

    async def call(self, method: str, path: str, token: str, **options: Any) -> Any:
        headers = {"Authorization": f"Bearer {token}"}
        response = await self.api.request(method, path, headers=headers, **options)
        assert response.is_success, response.text
        return response.json() if response.content else None

    async def socket(self, token: str, *, in_query: bool, **query: str) -> Socket:
        """A socket with `token` in `?token=` (as a browser must) or in the header."""
        params = {**query, "token": token} if in_query else query
        headers = {} if in_query else {"Authorization": f"Bearer {token}"}
        url = self.gateway.url.replace("http", "ws", 1) + "/v1/ws"
        if params:
            url += "?" + "&".join(f"{k}={v}" for k, v in params.items())
        socket = await Socket.open(url, additional_headers=headers)
        self.sockets.append(socket)
        return socket

    async def refresh(self, refresh_token: str) -> tuple[str, str]:
        """A new access and refresh token pair for `refresh_token`, both recorded."""
        body = {"refreshToken": refresh_token}
        response = await self.api.post("/v1/auth/refresh", json=body)
        assert response.status_code == 200, response.text
        pair = response.json()
        n = len(self.credentials)
        self.credentials[f"refreshed access token {n}"] = pair["accessToken"]
        self.credentials[f"refreshed refresh token {n}"] = pair["refreshToken"]
        return pair["accessToken"], pair["refreshToken"]


@pytest.fixture
def storyline(service_env_module: dict[str, str], tmp_path: Path) -> Iterator[Gateway]:
    """A gateway with the broadcast, acceptance, presence and fan-out services behind it,
    logging at DEBUG (the most any level writes) to files; stopped by the test before it reads
    them."""
    env = {**service_env_module, "LOG_LEVEL": "DEBUG"}
    with started(env, tmp_path, ("broadcast", "acceptance", "presence", "fanout")) as gateway:
        yield gateway


async def test_no_log_line_holds_a_credential(storyline: Gateway) -> None:
    """A whole story (fleet, driver online, refresh, search, accept, assign, cancel, sockets
    with the token in the header and in `?token=`, refused tokens) leaves none of its access
    tokens, refresh tokens or signing keys in any line any process wrote."""
    async with httpx.AsyncClient(base_url=storyline.url, timeout=15.0) as api:
        story = Story(storyline, api)
        try:
            await tell(story)
        finally:
            for socket in story.sockets:
                await socket.close()
    storyline.stop()
    story.credentials["access signing key"] = storyline.access_secret
    story.credentials["refresh signing key"] = storyline.refresh_secret
    lines = {proc.log: log_lines(proc.log) for proc in storyline.procs}
    gateway_lines = lines[storyline.procs[-1].log]
    assert sum("WebSocket /v1/ws?" in line for line in gateway_lines) >= 4
    leaks = [
        f"{path.name}: {name}: {line[:300]}"
        for path, written in lines.items()
        for line in written
        for name, secret in story.credentials.items()
        if secret in line
    ]
    assert leaks == [], "\n".join(leaks)


async def tell(story: Story) -> None:
    """The story: every kind of user, every way of presenting a token."""
    kind, customer, transporter = vehicle_type(), new_id("c"), new_id("t")
    driver, vehicle = new_id("d"), new_id("v")
    owner = story.token("transporter", transporter)
    place = {"vehicleType": kind, "lat": PICKUP["lat"], "lng": PICKUP["lng"]}
    await story.call("PUT", f"/v1/transporters/me/vehicles/{vehicle}", owner, json=place)
    person = {"name": "Ravi Kumar", "phone": "+919800000001"}
    await story.call("PUT", f"/v1/transporters/me/drivers/{driver}", owner, json=person)
    fleet = await story.socket(owner, in_query=True)
    trips = await story.socket(story.token("driver", driver), in_query=True)
    online = {"online": True}
    await story.call(
        "PUT", "/v1/drivers/me/availability", story.token("driver", driver), json=online
    )
    await fleet.until(lambda frames: any(f["type"] == "driver_status_changed" for f in frames))
    first_refresh = issue(story.gateway.refresh_secret, role="customer", sub=customer, ttl_s=600)
    story.credentials["first refresh token"] = first_refresh
    access, refresh = await story.refresh(first_refresh)
    watcher = await story.socket(access, in_query=True, lastEventId="0-0")
    await story.socket(story.token("customer", customer), in_query=False)
    broadcast = await story.call("POST", "/v1/broadcasts", access, json=search(kind))
    bid = broadcast["broadcastId"]
    await fleet.until(lambda frames: any(f["type"] == "new_broadcast" for f in frames))
    accepted = await story.call(
        "POST", f"/v1/broadcasts/{bid}/accept", owner, json={"vehicleType": kind, "quantity": 1}
    )
    assignment = accepted["assignments"][0]["assignmentId"]
    assign = {"driverId": driver, "vehicleId": vehicle}
    await story.call("POST", f"/v1/assignments/{assignment}/driver", owner, json=assign)
    await trips.until(lambda frames: any(f["type"] == "trip_assigned" for f in frames))
    access, _ = await story.refresh(refresh)
    await story.call("POST", f"/v1/broadcasts/{bid}/cancel", access, json={})
    await watcher.until(
        lambda frames: any(f.get("data", {}).get("state") == "cancelled" for f in frames)
    )
    await refuse(story, customer, refresh)


async def refuse(story: Story, customer: str, refresh: str) -> None:
    """Tokens the gateway refuses, as a careless or hostile client sends them."""
    refused = refused_tokens(story.gateway)
    for name, token in refused.items():
        story.credentials[f"refused {name} token"] = token
        for in_query in (True, False):
            with pytest.raises(Exception, match="401"):
                await story.socket(token, in_query=in_query)
    response = await story.api.get(
        "/v1/customers/me/broadcasts/active", headers={"Authorization": f"Bearer {refresh}"}
    )
    assert response.status_code == 401
    response = await story.api.post(
        "/v1/auth/refresh", json={"refreshToken": story.token("customer", customer)}
    )
    assert response.status_code == 401
