"""How long a service keeps an idle HTTP connection open (`HTTP_KEEPALIVE_SECONDS`, issue 10).

The AWS load balancer keeps idle connections to a target for 120 s and reuses them; a server that
closes them sooner (uvicorn's own default is 5 s) resets the requests the load balancer sends on
them, and the client gets a 502. Requests go over raw sockets, so a closed connection shows as
one instead of being reopened behind the test's back as an HTTP client's pool would.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator

import pytest

from tests.processes import Service, environment, wait_healthy

CONNECTIONS = 100
PAST_UVICORN_DEFAULT_S = 6.0  # uvicorn closed idle connections after 5 s


class RawConnection:
    """One HTTP/1.1 keep-alive connection, one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> RawConnection:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def get(self, path: str) -> int | str:
        """The status of `GET path` on this connection, or why there was none."""
        try:
            self.writer.write(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
            await self.writer.drain()
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (OSError, asyncio.IncompleteReadError) as e:
            return type(e).__name__
        lines = head.decode("latin-1").split("\r\n")
        length = next(
            int(line.split(":", 1)[1])
            for line in lines
            if line.lower().startswith("content-length:")
        )
        await self.reader.readexactly(length)
        return int(lines[0].split()[1])

    async def closed_by_server(self, within_s: float) -> bool:
        """Whether the server closes the connection within `within_s` (nothing else arrives)."""
        try:
            return await asyncio.wait_for(self.reader.read(1), within_s) == b""
        except TimeoutError:
            return False

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


@pytest.fixture
def gateway(service_env: dict[str, str]) -> Iterator[Callable[..., Service]]:
    """Start gateway processes with extra environment; each answers /health when returned."""
    started: list[Service] = []

    def start(**extra: str) -> Service:
        started.append(Service("gateway", environment(service_env, **extra)))
        wait_healthy(started[-1].port, started[-1].proc)
        return started[-1]

    yield start
    for service in started:
        service.stop()


async def test_idle_connections_outlive_uvicorns_own_default(
    gateway: Callable[..., Service],
) -> None:
    """By default, 100 connections left idle for 6 s each answer again on the same socket."""
    port = gateway().port
    connections = await asyncio.gather(*(RawConnection.open(port) for _ in range(CONNECTIONS)))
    try:
        first = await asyncio.gather(*(c.get("/livez") for c in connections))
        assert first == [200] * CONNECTIONS
        await asyncio.sleep(PAST_UVICORN_DEFAULT_S)  # the idle period is what is tested
        again = await asyncio.gather(*(c.get("/livez") for c in connections))
        assert again == [200] * CONNECTIONS
    finally:
        await asyncio.gather(*(c.close() for c in connections))


async def test_the_configured_keepalive_closes_an_idle_connection(
    gateway: Callable[..., Service],
) -> None:
    """With HTTP_KEEPALIVE_SECONDS=1 the server closes a connection after about 1 s idle."""
    port = gateway(HTTP_KEEPALIVE_SECONDS="1").port
    connection = await RawConnection.open(port)
    try:
        assert await connection.get("/livez") == 200
        idle_since = time.monotonic()
        assert await connection.closed_by_server(within_s=3.0)
        assert time.monotonic() - idle_since >= 0.5
    finally:
        await connection.close()
