"""`Idempotency-Key` on POST (CONTRACT.md section 2): replay, reuse, in flight, retry after 5xx."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import psycopg
import pytest

from tests.gateway.conftest import Gateway, StartGateway, new_id
from tests.gateway.helpers import error, valid_search

Conn = psycopg.AsyncConnection[Any]


def keyed(gateway: Gateway, sub: str, key: str) -> dict[str, str]:
    return {**gateway.auth("customer", sub), "Idempotency-Key": key}


async def test_same_key_and_body_replays_the_first_response(
    api: httpx.AsyncClient, system: Gateway
) -> None:
    """A retry with the same key and body gets the first response again, marked replayed."""
    headers = keyed(system, new_id("c"), new_id("k"))
    url = "/v1/broadcasts/unknown-broadcast/cancel"
    first = await api.post(url, json={"reason": "changed plans"}, headers=headers)
    error(first, 404, "not_found")
    assert "idempotent-replayed" not in first.headers
    again = await api.post(url, json={"reason": "changed plans"}, headers=headers)
    assert again.status_code == 404
    assert again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"


async def test_key_order_does_not_change_the_body(api: httpx.AsyncClient, system: Gateway) -> None:
    """The same JSON with its keys in another order is the same body for the key."""
    headers = keyed(system, new_id("c"), new_id("k"))
    body = valid_search(trucks=[])
    first = await api.post("/v1/broadcasts", json=body, headers=headers)
    error(first, 422, "invalid_request")
    reordered = dict(reversed(list(body.items())))
    again = await api.post("/v1/broadcasts", json=reordered, headers=headers)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content


async def test_same_key_with_another_body_is_422(api: httpx.AsyncClient, system: Gateway) -> None:
    """Reusing a key with a different body is 422 idempotency_key_reused."""
    headers = keyed(system, new_id("c"), new_id("k"))
    url = "/v1/broadcasts/unknown-broadcast/cancel"
    await api.post(url, json={"reason": "one"}, headers=headers)
    response = await api.post(url, json={"reason": "two"}, headers=headers)
    error(response, 422, "idempotency_key_reused")


async def test_same_key_on_another_path_is_422(api: httpx.AsyncClient, system: Gateway) -> None:
    """A key is bound to its request: the same key on another route is reused too."""
    headers = keyed(system, new_id("c"), new_id("k"))
    await api.post("/v1/broadcasts/one/cancel", json={}, headers=headers)
    response = await api.post("/v1/broadcasts/two/cancel", json={}, headers=headers)
    error(response, 422, "idempotency_key_reused")


async def test_keys_are_per_caller(api: httpx.AsyncClient, system: Gateway) -> None:
    """Two callers using the same key value never see each other's responses."""
    key = new_id("k")
    url = "/v1/broadcasts/unknown-broadcast/cancel"
    await api.post(url, json={"reason": "one"}, headers=keyed(system, new_id("c"), key))
    other = await api.post(url, json={"reason": "two"}, headers=keyed(system, new_id("c"), key))
    error(other, 404, "not_found")
    assert "idempotent-replayed" not in other.headers


@pytest.mark.parametrize("key", ["", "k" * 256])
async def test_key_of_wrong_length_is_422(
    api: httpx.AsyncClient, system: Gateway, key: str
) -> None:
    """An Idempotency-Key that is empty or longer than 255 characters is 422."""
    headers = keyed(system, new_id("c"), key)
    response = await api.post("/v1/broadcasts/b/cancel", json={}, headers=headers)
    body = error(response, 422, "invalid_request")
    assert body["details"][0]["field"] == "Idempotency-Key"


async def _row(conn: Conn, principal: str, key: str) -> tuple[Any, ...] | None:
    cur = await conn.execute(
        "SELECT response_status FROM idempotency_keys WHERE principal = %s AND key = %s",
        (principal, key),
    )
    return await cur.fetchone()


async def _until_row(conn: Conn, principal: str, key: str) -> None:
    deadline = time.monotonic() + 5
    while await _row(conn, principal, key) is None:
        assert time.monotonic() < deadline, "the first request never claimed its key"
        await asyncio.sleep(0.02)


async def test_retry_while_running_is_409_and_a_5xx_frees_the_key(
    start_gateway: StartGateway, conn: Conn
) -> None:
    """A retry during the first call is 409 request_in_flight; a 503 is not kept, so it reruns."""
    gateway = start_gateway(COMMAND_TIMEOUT_SECONDS="2")
    sub, key = new_id("c"), new_id("k")
    async with httpx.AsyncClient(base_url=gateway.url, timeout=15) as client:
        post = client.post("/v1/broadcasts", json=valid_search(), headers=keyed(gateway, sub, key))
        first = asyncio.create_task(post)
        await _until_row(conn, f"customer:{sub}", key)
        second = await client.post(
            "/v1/broadcasts", json=valid_search(), headers=keyed(gateway, sub, key)
        )
        error(second, 409, "request_in_flight")
        error(await first, 503, "unavailable")
        assert await _row(conn, f"customer:{sub}", key) is None
        third = await client.post(
            "/v1/broadcasts", json=valid_search(), headers=keyed(gateway, sub, key)
        )
        error(third, 503, "unavailable")
        assert "idempotent-replayed" not in third.headers


async def test_abandoned_in_flight_key_is_taken_over(
    start_gateway: StartGateway, conn: Conn
) -> None:
    """A key in flight for over 60 s (its gateway died) is taken over by the retry, not 409."""
    gateway = start_gateway(COMMAND_TIMEOUT_SECONDS="2")
    sub, key = new_id("c"), new_id("k")
    async with httpx.AsyncClient(base_url=gateway.url, timeout=15) as client:
        post = client.post("/v1/broadcasts", json=valid_search(), headers=keyed(gateway, sub, key))
        first = asyncio.create_task(post)
        await _until_row(conn, f"customer:{sub}", key)
        await conn.execute(
            "UPDATE idempotency_keys SET created_at = now() - interval '2 minutes'"
            " WHERE principal = %s AND key = %s",
            (f"customer:{sub}", key),
        )
        retry = await client.post(
            "/v1/broadcasts", json=valid_search(), headers=keyed(gateway, sub, key)
        )
        error(retry, 503, "unavailable")
        error(await first, 503, "unavailable")


async def test_a_change_whose_key_could_not_be_saved_at_first_is_not_answered_503(
    api: httpx.AsyncClient, system: Gateway, database_url: str
) -> None:
    """A keyed search that took effect, whose response PostgreSQL refuses to store once (a
    terminated backend, injected by a trigger), is answered its 201 (the write is asked again),
    never 503 "nothing was changed"; the key then replays it."""
    key, name = new_id("k"), f"fail_{new_id('s').replace('-', '_')}"
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute(f"CREATE SEQUENCE {name}")
        await conn.execute(
            f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            f" IF NEW.key = '{key}' AND nextval('{name}') = 1 THEN"
            " RAISE EXCEPTION 'injected' USING ERRCODE = '57P01'; END IF; RETURN NEW; END $$"
        )
        await conn.execute(
            f"CREATE TRIGGER {name} BEFORE UPDATE ON idempotency_keys"
            f" FOR EACH ROW EXECUTE FUNCTION {name}()"
        )
        try:
            headers = keyed(system, new_id("c"), key)
            first = await api.post("/v1/broadcasts", json=valid_search(), headers=headers)
            again = await api.post("/v1/broadcasts", json=valid_search(), headers=headers)
        finally:
            await conn.execute(f"DROP TRIGGER {name} ON idempotency_keys")
            await conn.execute(f"DROP FUNCTION {name}()")
            await conn.execute(f"DROP SEQUENCE {name}")
    assert first.status_code == 201, first.text
    assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
