"""The socket itself: tokens checked before the upgrade, and slow clients dropped without
slowing anybody else."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from libs.runtime.tokens import issue
from tests.realtime.conftest import System, new_id
from tests.realtime.sockets import Socket
from tests.realtime.test_resume import flood


def bad_tokens(system: System) -> dict[str, str]:
    sub = new_id("c")
    return {
        "malformed": "not-a-jwt",
        "wrong key": issue("another-secret-" + "k" * 40, role="customer", sub=sub, ttl_s=600),
        "expired": issue(system.env["JWT_SECRET"], role="customer", sub=sub, ttl_s=-10),
        "refresh token": issue(
            system.env["JWT_REFRESH_SECRET"], role="customer", sub=sub, ttl_s=600
        ),
    }


async def refused(url: str, **options: object) -> InvalidStatus:
    with pytest.raises(InvalidStatus) as caught:
        async with connect(url, open_timeout=10, **options):  # type: ignore[arg-type]
            pass
    return caught.value


# Why each of `bad_tokens` is refused (the 401's `reason`, as on the HTTP routes).
REASONS = {
    "malformed": "malformed",
    "wrong key": "unknown_key",
    "expired": "expired",
    "refresh token": "unknown_key",  # signed with the refresh key, which no access token uses
}


async def test_bad_token_never_gets_a_socket(system: System) -> None:
    """No token, or a bad one in the header or in ?token=, is refused before the upgrade with
    the API's 401 body, saying why as the HTTP routes do and never echoing the token."""
    cases: list[tuple[str, str, dict[str, object]]] = [("no token", "missing", {})]
    tokens = bad_tokens(system)
    for name, token in tokens.items():
        header: dict[str, object] = {"additional_headers": {"Authorization": f"Bearer {token}"}}
        cases.append((f"{name} in header", REASONS[name], header))
        cases.append((f"{name} in query", REASONS[name], {"url": system.ws_url(1, token=token)}))
    signatures = [token.rsplit(".", 1)[-1].encode() for token in tokens.values()]
    for name, reason, options in cases:
        url = str(options.pop("url", system.ws_url(0)))
        error = await refused(url, **options)
        assert error.response.status_code == 401, name
        raw = error.response.body or b"{}"
        body = json.loads(raw)
        assert (body["error"]["code"], body["error"]["reason"]) == ("unauthorized", reason), name
        assert not any(signature in raw for signature in signatures), name


async def test_token_in_header_or_query(system: System) -> None:
    """A valid access token works in the Authorization header and as ?token=."""
    sub = new_id("c")
    by_query = await Socket.open(system.ws_url(1, token=system.token("customer", sub)))
    by_header = await Socket.open(system.ws_url(0), additional_headers=system.auth("customer", sub))
    for client in (by_query, by_header):
        await client.send({"type": "ping"})
        assert await client.count(1) == [{"type": "pong"}]
        await client.close()


def tiny_receive_buffer(port: int) -> socket.socket:
    """A TCP connection whose kernel receive buffer is as small as it gets."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


async def dropped_count(api: httpx.AsyncClient, system: System, gateway: int) -> float:
    text = (await api.get(f"{system.url(gateway)}/metrics")).text
    for line in text.splitlines():
        if line.startswith("weelo_gateway_sockets_dropped_total "):
            return float(line.split()[1])
    return 0.0


async def test_slow_client_is_dropped_and_resumes(
    api: httpx.AsyncClient, system: System, database_url: str
) -> None:
    """A client that stops reading is dropped (close 4008) while the same user's other socket
    and another user's socket get every message on time; the dropped client resumes with
    lastEventId and gets the rest, each once."""
    transporter, count = new_id("t"), 950  # fewer than the inbox keeps
    fast = await system.connect("transporter", transporter, 0)
    slow = await connect(
        system.ws_url(0),
        sock=tiny_receive_buffer(system.gateways[0].port),
        additional_headers=system.auth("transporter", transporter),
        max_queue=1,
        compression=None,
    )
    bystander = await system.connect("transporter", new_id("t"), 0)
    dropped_before = await dropped_count(api, system, 0)

    started = time.monotonic()
    await asyncio.gather(
        flood(database_url, transporter, count, padding=8000),
        flood(database_url, bystander.sub, 50),
    )
    await fast.count(count, timeout=60)
    await bystander.count(50, timeout=10)
    fast_took = time.monotonic() - started
    deadline = time.monotonic() + 10
    while await dropped_count(api, system, 0) <= dropped_before:
        assert time.monotonic() < deadline, "the slow client was not dropped"
        await asyncio.sleep(0.05)

    got: list[dict[str, object]] = []
    with pytest.raises(ConnectionClosed):
        while True:
            got.append(json.loads(await asyncio.wait_for(slow.recv(), 10)))
    assert slow.close_code == 4008
    assert 0 < len(got) < count
    assert got == fast.frames[: len(got)]
    resumed = await system.connect(
        "transporter", transporter, 1, lastEventId=str(got[-1]["eventId"])
    )
    assert await resumed.count(count - len(got), timeout=30) == fast.frames[len(got) :]
    await resumed.quiet(count - len(got))
    assert fast_took < 30
    for client in (fast, bystander, resumed):
        await client.close()
