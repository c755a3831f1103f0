"""Expiry of broadcasts at `expiresAt` (CONTRACT.md sections 4 and 8), many per transaction.

One statement decides and writes a whole batch: it locks the broadcasts' rows (in id order), so
it queues with claims and cancels; it ends `expired` those still active and past their expiry
(the rule claims and cancel decide by too), expires their open slots (accepted slots keep their
assignments) and appends their `broadcast_expired` events. An expiry that commits first makes
later claims and cancels `request_expired`; a broadcast filled or cancelled first is left alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec
import psycopg
from psycopg_pool import AsyncConnectionPool

from libs.events.catalogue import BroadcastExpired
from libs.events.clock import Clock
from libs.events.codec import encode
from libs.events.metrics import EXPIRY_LATENESS
from libs.events.store import ConcurrencyConflict, append_decided, event_type
from libs.readmodel.broadcasts import EXPIRE_PAST_EXPIRY, active_expiries, expiry_params

Conn = psycopg.AsyncConnection[Any]
RETRIES = 5

# Each broadcast `EXPIRE_PAST_EXPIRY` ended gets its event: the catalogue's encoding of one
# `BroadcastExpired`, with the broadcast's id put in.
_TEMPLATE = BroadcastExpired(broadcast_id="", end_reason="timeout")
_ID_FIELD = next(f for f in msgspec.structs.fields(BroadcastExpired) if f.name == "broadcast_id")
_EVENTS = """,
appending AS (
    SELECT 'broadcast-' || broadcast_id AS stream_id, version, %(type)s AS event_type,
           jsonb_set(%(event)s::jsonb, %(id_path)s, to_jsonb(broadcast_id)) AS data
    FROM expired
)"""
_EVENT_PARAMS = {
    "type": event_type(_TEMPLATE),
    "event": encode(_TEMPLATE).decode(),
    "id_path": [_ID_FIELD.encode_name],
}


@dataclass
class Outcome:
    """What a batch of expiries did: ids expired now, ids not yet due (with their time), and
    ids that had already ended (or never existed)."""

    expired: list[str] = field(default_factory=list)
    early: dict[str, datetime] = field(default_factory=dict)
    ended: list[str] = field(default_factory=list)


async def expire_in(conn: Conn, broadcast_ids: Sequence[str], clock: Clock) -> Outcome:
    """Expire every broadcast of `broadcast_ids` that is active and due. On a connection in
    autocommit (the pool's) the deciding statement is a transaction of its own, committed when
    it answers: one round trip, no BEGIN or COMMIT of its own. The ids it left alone are read
    afterwards (rare: a timer whose broadcast ended meanwhile, or one claimed early)."""
    params = {**expiry_params(broadcast_ids, clock()), **_EVENT_PARAMS}
    streams = await append_decided(conn, EXPIRE_PAST_EXPIRY + _EVENTS, params)
    outcome = Outcome(expired=[s.removeprefix("broadcast-") for s in streams])
    done = set(outcome.expired)
    rest = [bid for bid in broadcast_ids if bid not in done]
    if rest:
        outcome.early = await active_expiries(conn, rest)
        outcome.ended = [bid for bid in rest if bid not in outcome.early]
    return outcome


async def expire(
    pool: AsyncConnectionPool[Any], broadcast_ids: Sequence[str], clock: Clock, connect_s: float
) -> Outcome:
    """`expire_in` on a pooled connection (waiting at most `connect_s` for one), retried on a
    write conflict (the failed statement rolled itself back)."""
    for _ in range(RETRIES):
        try:
            async with pool.connection(timeout=connect_s) as conn:
                return await expire_in(conn, broadcast_ids, clock)
        except ConcurrencyConflict:
            continue
    raise ConcurrencyConflict("broadcast expiry batch", -1)


def observe_lateness(due_ms: Mapping[str, int], expired: Sequence[str], now_s: float) -> None:
    """How long after its due time (`expiresAt` rounded up to the millisecond) each of `expired`
    was committed, `now_s` being the timer's clock when the commit answered
    (`weelo_expiry_lateness_seconds` on /metrics). No I/O: it runs on the firing path."""
    for bid in expired:
        EXPIRY_LATENESS.observe(max(now_s - due_ms[bid] / 1000, 0.0))
