"""A service reply without a result is the gateway's 500 `internal`, never a 200 `null`.

A real gateway process, real Redis and PostgreSQL; behind it, in this test, the services' own
command executor (`command_handler` on a consumer-group runner) with handlers that answer
nothing: a service bug whose reply carries no result (`"result": null` on the wire).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from libs.events.commands import (
    AcceptSlots,
    CreateBroadcast,
    SetAvailability,
    commands_stream,
)
from libs.events.executor import command_handler, command_key
from libs.events.handlers import CommandHandlers
from libs.events.runner import RunnerConfig, StreamRunner
from libs.events.streams import dead_letter_stream
from libs.runtime.tokens import Role
from tests.gateway.conftest import StartGateway
from tests.gateway.helpers import error, valid_search


async def _answers_nothing(_deps: None, _conn: Any, _command: Any) -> Any:
    """A handler that returns no result (its reply's result is JSON null)."""
    return None


# The service each command goes to, and a handler table answering nothing for it.
SILENT: dict[str, CommandHandlers[None]] = {
    "acceptance": CommandHandlers[None]().on(AcceptSlots, _answers_nothing),
    "presence": CommandHandlers[None]().on(SetAvailability, _answers_nothing),
    "broadcast": CommandHandlers[None]().on(CreateBroadcast, _answers_nothing),
}


@pytest.fixture
async def silent_services(database_url: str, redis_url: str, prefix: str) -> AsyncIterator[None]:
    """The services' command executors on this test's prefix, with handlers that return
    nothing."""
    redis = Redis.from_url(redis_url)
    stop = asyncio.Event()
    async with AsyncConnectionPool(
        database_url, min_size=1, max_size=3, kwargs={"autocommit": True}
    ) as pool:
        runners = [
            StreamRunner(
                redis,
                stream=commands_stream(prefix, service),
                group=service,
                consumer=f"silent-{uuid.uuid4().hex[:6]}",
                handler=command_handler(table, None, pool, redis),
                dead_letter=dead_letter_stream(prefix),
                config=RunnerConfig(block_ms=200),
                key=command_key,
            )
            for service, table in SILENT.items()
        ]
        tasks = [asyncio.create_task(r.run(stop)) for r in runners]
        yield
        stop.set()
        await asyncio.gather(*tasks)
    await redis.aclose()


RESULT_ROUTES: list[tuple[Role, str, str, dict[str, Any]]] = [
    (
        "transporter",
        "POST",
        "/v1/broadcasts/some-broadcast/accept",
        {"vehicleType": "open_17ft", "quantity": 1},
    ),
    ("driver", "PUT", "/v1/drivers/me/availability", {"online": True}),
    ("customer", "POST", "/v1/broadcasts", valid_search()),
]


@pytest.mark.parametrize(("role", "method", "path", "body"), RESULT_ROUTES)
async def test_a_reply_without_a_result_is_500_internal(
    start_gateway: StartGateway,
    silent_services: None,
    role: Role,
    method: str,
    path: str,
    body: dict[str, Any],
) -> None:
    """A route that answers with the service's result gets none: 500 `internal` in the
    contract's error body, not 200 with a `null` body."""
    gateway = start_gateway()
    async with httpx.AsyncClient(base_url=gateway.url, timeout=15) as client:
        response = await client.request(method, path, json=body, headers=gateway.auth(role))
    error(response, 500, "internal")
    assert set(response.json()) == {"error"}
