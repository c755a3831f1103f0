"""A service connection whose client goes silent mid-pipeline is ended like an idle transaction
(`libs/runtime/silent.py`): PostgreSQL's `idle_in_transaction_session_timeout` never fires for a
client in pipeline mode, so without the guard its row locks are held for as long as it is silent.
Real service processes, a real PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from libs.runtime.postgres import conninfo
from libs.runtime.silent import POLL_S, SILENT_S
from tests.processes import Service, environment, wait_healthy

SILENCE_S = 6.0  # how long the "frozen" client stays silent
MARGIN_S = 1.0  # scheduling slack on a shared 2-core machine


@pytest.fixture(scope="module")
def database_url(module_database: str) -> str:
    """The guard acts on its whole database: the module has its own."""
    return module_database


@pytest.fixture(scope="module")
def guard(service_env_module: dict[str, str], database_url: str) -> Iterator[Service]:
    """One service process (any runs the guard), and the scratch row the tests lock."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS silent_scratch (id int PRIMARY KEY)")
        conn.execute("INSERT INTO silent_scratch VALUES (1) ON CONFLICT DO NOTHING")
    service = Service("broadcast", environment(service_env_module))
    try:
        wait_healthy(service.port, service.proc)
        yield service
    finally:
        service.stop()


async def _service_connection(database_url: str) -> psycopg.AsyncConnection[Any]:
    """A connection as a service opens it (`weelo-<role>-<pid>`, the idle timeout set)."""
    return await psycopg.AsyncConnection.connect(
        conninfo(database_url, "weelo-acceptance-1"), autocommit=True
    )


async def _wait_for_row(database_url: str) -> float:
    """Seconds until this connection gets the scratch row's lock."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        started = time.monotonic()
        async with conn.transaction():
            await conn.execute("SELECT id FROM silent_scratch WHERE id = 1 FOR UPDATE")
        return time.monotonic() - started


async def test_a_client_silent_mid_pipeline_loses_its_locks_within_the_idle_timeout(
    guard: Service, database_url: str
) -> None:
    """A pipelined transaction holding a row lock whose client then says nothing (as a frozen
    process) is terminated after about `SILENT_S`: a waiter gets the row well before the client
    would have spoken again, and the silent client's transaction is gone."""
    holder = await _service_connection(database_url)
    failed: list[BaseException] = []

    async def silent_holder() -> None:
        try:
            async with holder.pipeline(), holder.transaction():
                await holder.execute("SELECT id FROM silent_scratch WHERE id = 1 FOR UPDATE")
                await holder.execute("SELECT 1")
                await asyncio.sleep(SILENCE_S)  # frozen: nothing more is sent
        except psycopg.OperationalError as e:
            failed.append(e)

    holding = asyncio.create_task(silent_holder())
    await asyncio.sleep(0.2)  # the lock is taken (the waiter below would otherwise win it)
    waited = await _wait_for_row(database_url)
    await holding
    await holder.close()
    assert waited <= SILENT_S + POLL_S + MARGIN_S, f"waited {waited:.2f}s for the row"
    assert failed, "the silent transaction went on"


async def test_a_pipeline_that_waited_on_a_lock_and_goes_on_is_left_alone(
    guard: Service, database_url: str
) -> None:
    """A pipelined transaction that waits 2 s for a lock (longer than `SILENT_S`) and then sends
    its next statements at once commits: a long statement is not client silence."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as blocker:
        pipelined = await _service_connection(database_url)
        async with blocker.transaction():
            await blocker.execute("SELECT id FROM silent_scratch WHERE id = 1 FOR UPDATE")

            async def waits_then_goes_on() -> None:
                async with pipelined.pipeline(), pipelined.transaction():
                    await pipelined.execute("SELECT id FROM silent_scratch WHERE id = 1 FOR UPDATE")
                    cur = await pipelined.execute("SELECT 1")
                    assert await cur.fetchone() == (1,)  # waits for the lock, then goes on
                    for _ in range(3):
                        await pipelined.execute("SELECT 1")

            going = asyncio.create_task(waits_then_goes_on())
            await asyncio.sleep(2.0)  # the pipeline waits on our lock meanwhile
        await going
        await pipelined.close()
