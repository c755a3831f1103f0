"""The soak's WebSocket holders: one process per gateway, its sockets idle except for receiving.

`python -m bench.soak_sockets WS_URL SPEC_FILE` opens one socket for each `[role, sub]` of the
JSON list in SPEC_FILE (tokens signed with `accept_storm.SECRET`), prints `ready` once all are
open, then every `REPORT_S` one JSON line of counts so far: `{"at": epoch s, "open": n,
"closed": n, "failed": n, "frames": {type: n}}`. `closed` counts sockets the server closed or
that broke (each is opened again a second later: a driver's open socket is its heartbeat),
`failed` counts opening attempts that failed. It exits when its stdin closes.

The clients are `websockets` with its defaults (permessage-deflate offered, a ping every 20 s),
as a browser offers compression; frames are only counted by type, never decoded further.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import uvloop
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidHandshake, WebSocketException

from bench.accept_storm import SECRET
from libs.runtime.tokens import Role, issue

REPORT_S = 5.0
OPENING = 50  # sockets being opened at once
REOPEN_AFTER_S = 1.0
TOKEN_TTL_S = 6 * 3600


@dataclass
class Counts:
    open: int = 0
    closed: int = 0
    failed: int = 0
    frames: Counter[str] = field(default_factory=Counter)

    def line(self) -> str:
        return json.dumps(
            {
                "at": time.time(),
                "open": self.open,
                "closed": self.closed,
                "failed": self.failed,
                "frames": dict(self.frames),
            }
        )


def frame_type(raw: str | bytes) -> str:
    """The `type` of a server frame, read without decoding the JSON (the server writes it
    first: `{"type": "..."`)."""
    text = raw if isinstance(raw, str) else raw.decode()
    start = text.find('"type":')
    if start < 0:
        return "?"
    first = text.index('"', start + 7) + 1
    return text[first : text.index('"', first)]


async def hold(url: str, role: Role, sub: str, counts: Counts, gate: asyncio.Semaphore) -> None:
    """Keep one socket of `sub` open, counting its frames; open it again when it closes."""
    token = issue(SECRET, role=role, sub=sub, ttl_s=TOKEN_TTL_S)
    while True:
        try:
            async with gate:
                ws = await connect(
                    url, additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=120
                )
        except (OSError, TimeoutError, InvalidHandshake):
            counts.failed += 1
            await asyncio.sleep(REOPEN_AFTER_S)
            continue
        counts.open += 1
        with contextlib.suppress(WebSocketException, OSError):
            async for raw in ws:
                counts.frames[frame_type(raw)] += 1
        counts.open -= 1
        counts.closed += 1
        await asyncio.sleep(REOPEN_AFTER_S)


async def main(url: str, spec: list[tuple[Role, str]]) -> None:
    counts, gate = Counts(), asyncio.Semaphore(OPENING)
    tasks = [asyncio.create_task(hold(url, role, sub, counts, gate)) for role, sub in spec]
    while counts.open < len(spec):  # noqa: ASYNC110 (counts are plain integers)
        await asyncio.sleep(0.1)
    print("ready", flush=True)
    while tasks:
        print(counts.line(), flush=True)
        await asyncio.sleep(REPORT_S)


def _exit_when_stdin_closes() -> None:
    sys.stdin.read()
    os._exit(0)


if __name__ == "__main__":
    threading.Thread(target=_exit_when_stdin_closes, daemon=True).start()
    given = json.loads(Path(sys.argv[2]).read_text())
    uvloop.run(main(sys.argv[1], [(role, sub) for role, sub in given]))
