"""Whether broadcasts are still active, asked of PostgreSQL in batches.

The timer's consumer asks for each new broadcast it schedules. After a restart it meets a
backlog of thousands of events, handled side by side; asked one query each, they would queue for
the pool ahead of the expiries that are due. `ActiveBroadcasts` sends the questions asked in one
turn of the event loop as one query instead.
"""

from __future__ import annotations

import asyncio
from typing import Any

from psycopg_pool import AsyncConnectionPool

from libs.readmodel.states import UNENDED_SQL

_STILL_ACTIVE = f"""SELECT broadcast_id FROM broadcasts WHERE broadcast_id = ANY(%b::text[])
    AND state IN {UNENDED_SQL}"""  # noqa: S608 (constants only)

Asked = tuple[str, "asyncio.Future[bool]"]


class ActiveBroadcasts:
    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self._pool = pool
        self._asked: list[Asked] = []
        self._asking: set[asyncio.Task[None]] = set()

    async def __call__(self, broadcast_id: str) -> bool:
        """Whether `broadcast_id` is active; a database error is raised to every asker."""
        loop = asyncio.get_running_loop()
        if not self._asked:
            loop.call_soon(self._ask_queued)
        answer: asyncio.Future[bool] = loop.create_future()
        self._asked.append((broadcast_id, answer))
        return await answer

    def _ask_queued(self) -> None:
        batch, self._asked = self._asked, []
        task = asyncio.ensure_future(self._ask(batch))
        self._asking.add(task)
        task.add_done_callback(self._asking.discard)

    async def _ask(self, batch: list[Asked]) -> None:
        try:
            async with self._pool.connection() as conn:
                cur = await conn.execute(_STILL_ACTIVE, ([b for b, _ in batch],), prepare=True)
                active = {row[0] for row in await cur.fetchall()}
        except BaseException as e:
            for _, answer in batch:
                if not answer.done():
                    answer.set_exception(e)
            if not isinstance(e, Exception):
                raise
            return
        for broadcast_id, answer in batch:
            if not answer.done():
                answer.set_result(broadcast_id in active)
