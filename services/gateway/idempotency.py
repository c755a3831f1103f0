"""`Idempotency-Key` on POST: the first response is stored per caller and key and replayed.

A key is claimed by inserting its row before the work runs (in flight); a retry then finds the
row: another body is 422 `idempotency_key_reused`, no response yet is 409 `request_in_flight`
(unless the row is older than the stale limit: its owner died, so the retry takes it over), and
a stored response is replayed with `Idempotent-Replayed: true`. A 5xx is not stored: the row is
deleted so a retry runs again, with the same command id, so the service dedupes it too.
"""

from __future__ import annotations

import contextlib
import hashlib
import uuid

import msgspec
from starlette.responses import Response

from services.gateway import idempotency_rows as rows
from services.gateway.errors import invalid, render
from services.gateway.http import Call, Handler, json_response

HEADER = "idempotency-key"
REPLAYED = {"Idempotent-Replayed": "true"}
COMMAND_IDS = uuid.UUID("5b0f6a4e-3c0e-4d53-9a55-6b8f3f0c2d11")


def request_hash(call: Call) -> str:
    """Hash of method, path and body (JSON canonicalised, so key order does not matter).

    A body that is not JSON (not UTF-8, nested too deeply for the decoder, ...) is hashed as
    its bytes; the handler then refuses it with a 422 like any other malformed body."""
    try:
        body = msgspec.json.encode(msgspec.json.decode(call.body), order="sorted")
    except (msgspec.MsgspecError, ValueError, RecursionError):
        body = call.body
    head = f"{call.request.method} {call.request.url.path}\n".encode()
    return hashlib.sha256(head + body).hexdigest()


def idempotent(handler: Handler) -> Handler:
    """`handler` behind the `Idempotency-Key` protocol (a no-op without the header)."""

    async def run(call: Call) -> Response:
        key = call.request.headers.get(HEADER)
        if key is None:
            return await handler(call)
        if not 1 <= len(key) <= 255:
            raise invalid("Idempotency-Key", "must be 1 to 255 characters")
        use = rows.KeyUse(
            call.caller, key, request_hash(call), call.deps.config.idempotency_stale_s
        )
        async with call.connection() as conn:
            claimed = await rows.claim(conn, use)
        if isinstance(claimed, rows.Stored):
            return replay(claimed)
        command_id = str(uuid.uuid5(COMMAND_IDS, f"{use.caller}\n{key}\n{use.digest}"))
        return await _run_claimed(handler, call.with_command_id(command_id), use, claimed)

    return run


def replay(stored: rows.Stored) -> Response:
    """The stored response again; a 201 is 200 the second time (nothing new was created)."""
    status = 200 if stored.status == 201 else stored.status
    if not stored.body:
        return Response(status_code=status, headers=REPLAYED)
    return json_response(stored.body, status, dict(REPLAYED))


async def _run_claimed(
    handler: Handler, call: Call, use: rows.KeyUse, claimed: rows.Claimed
) -> Response:
    """Run the claimed request; keep its response, or free the key after a 5xx. Once the
    request made its change, a database failing that write is asked again (`Call.read`), never
    answered 503: that would say nothing was changed."""
    try:
        response = await handler(call)
    except Exception as e:
        response = await render(call.request, e)
    except BaseException:
        with contextlib.suppress(Exception):
            async with call.connection() as conn:
                await rows.release(conn, use, claimed)
        raise
    if response.status_code >= 500:
        await call.read(lambda conn: rows.release(conn, use, claimed))
    else:
        stored = rows.Stored(response.status_code, bytes(response.body))
        await call.read(lambda conn: rows.save(conn, use, claimed, stored))
    return response
