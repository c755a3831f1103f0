"""A WebSocket client for the tests: reads every frame in the background, waits with deadlines."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from libs.runtime.tokens import Role

Frame = dict[str, Any]


class Socket:
    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.frames: list[Frame] = []
        self.close_code: int | None = None
        self.role: Role = "customer"
        self.sub = ""
        self._changed = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, url: str, **options: Any) -> Socket:
        return cls(await connect(url, open_timeout=10, **options))

    async def _read(self) -> None:
        try:
            async for raw in self.conn:
                self.frames.append(json.loads(raw))
                async with self._changed:
                    self._changed.notify_all()
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self.conn.close_code
            async with self._changed:
                self._changed.notify_all()

    async def until(self, check: Callable[[list[Frame]], bool], timeout: float = 10.0) -> None:
        """Wait until `check(frames)` holds; fail after `timeout` seconds."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: check(self.frames) or self._reader.done())
        assert check(self.frames), f"frames: {self.frames} (closed: {self.close_code})"

    async def count(self, n: int, timeout: float = 10.0) -> list[Frame]:
        """Wait for at least `n` frames; the first `n`."""
        try:
            await self.until(lambda frames: len(frames) >= n, timeout)
        except TimeoutError:
            raise AssertionError(f"{len(self.frames)} of {n} frames: {self.frames}") from None
        return self.frames[:n]

    async def quiet(self, n: int, seconds: float = 0.5) -> None:
        """Assert that no frame beyond the first `n` arrives within `seconds`."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert len(self.frames) <= n, f"unexpected frames: {self.frames[n:]}"
            await asyncio.sleep(0.05)
        assert len(self.frames) == n, f"frames: {self.frames}"

    async def closed(self, timeout: float = 10.0) -> int | None:
        """Wait for the server to close the socket; its close code."""
        async with asyncio.timeout(timeout):
            await asyncio.shield(self._reader)
        return self.close_code

    async def send(self, message: Frame) -> None:
        await self.conn.send(json.dumps(message))

    async def close(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self.conn.close()
        await asyncio.gather(self._reader, return_exceptions=True)

    @property
    def last_id(self) -> str:
        return str([f for f in self.frames if "eventId" in f][-1]["eventId"])


def brief(frames: list[Frame]) -> list[tuple[str, dict[str, Any]]]:
    """(type, data) of each frame: what the contract fixes, without ids and times."""
    return [(f["type"], f.get("data", {})) for f in frames]
