"""Peers of the accept storm: claiming truck slots straight on PostgreSQL, with nothing around it.

What a team would write instead of the acceptance service, measured in the same `make bench`
run and on the same PostgreSQL as our end-to-end storm (`bench/accept_storm.py`), its rows
beside ours. Each run makes a scratch table like our slots (`claim_slots`: one row per truck
slot, state `open` or `accepted`, its assignee) holding as many broadcasts and slots as one storm
run (5 broadcasts of 200 slots), and 200 clients (asyncio tasks with psycopg, one per
transporter) race over them as the storm's transporters do: each picks a random slot it does not
know to be taken and claims it, learning from its own losses and from every win, until every
slot is won. The clients share one psycopg pool of `POOL_SIZE` (50) connections, since
PostgreSQL's 100 connections are shared with other work on this machine; an attempt's time
includes its wait for a connection, as one of our requests waits for its service's pool.

- `serializable`, the old plan: `BEGIN ISOLATION LEVEL SERIALIZABLE`; `SELECT` the slot's state;
  `UPDATE` it when open; `COMMIT`. A serialization failure (SQLSTATE 40001) is rolled back and
  tried again after a random backoff of up to 1 ms, doubling each time up to 32 ms, at most
  `MAX_TRIES` times (then counted as an error).
- `conditional`: one autocommit statement, `UPDATE claim_slots SET state = 'accepted',
  assignee = %s WHERE slot_id = %s AND state = 'open'`: a changed row is a win, none a loss.

Afterwards PostgreSQL must hold every slot accepted, each by the one client told it won.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import errors
from psycopg_pool import AsyncConnectionPool

CLIENTS = 200
POOL_SIZE = 50
BROADCASTS = 5
SLOTS_PER_BROADCAST = 200
MAX_TRIES = 20
BACKOFF_S = 0.001
BACKOFF_CAP_S = 0.032

_TABLE = """
CREATE TABLE claim_slots (
    slot_id      text PRIMARY KEY,
    broadcast_id text NOT NULL,
    state        text NOT NULL CHECK (state IN ('open', 'accepted')),
    assignee     text
)
"""
_READ = "SELECT state FROM claim_slots WHERE slot_id = %s"
_TAKE = "UPDATE claim_slots SET state = 'accepted', assignee = %s WHERE slot_id = %s"
_TAKE_IF_OPEN = _TAKE + " AND state = 'open'"


@dataclass
class Claims:
    """One peer run: each attempt's time, the wins (slot -> clients told they won), retries."""

    peer: str
    latencies: list[float] = field(default_factory=list)
    wins: dict[str, list[str]] = field(default_factory=dict)
    lost: int = 0
    retries: int = 0
    errors: int = 0
    wall: float = 0.0
    client_cpu_s: float = 0.0
    load: tuple[float, float] = (0.0, 0.0)
    winners_ok: bool = False

    @property
    def rate(self) -> float:
        """Attempts per second (a retried attempt counts once; its retries are `retries`)."""
        return len(self.latencies) / self.wall


Claim = Callable[[psycopg.AsyncConnection[Any], str, str, Claims], Awaitable[bool | None]]


async def claim_serializable(
    conn: psycopg.AsyncConnection[Any], slot: str, client: str, out: Claims
) -> bool | None:
    """Read-then-write in a SERIALIZABLE transaction, retried on serialization failures: True
    won, False taken by someone else, None gave up after `MAX_TRIES`."""
    for tries in range(MAX_TRIES):
        try:
            async with conn.transaction():
                row = await (await conn.execute(_READ, (slot,))).fetchone()
                if row is None or row[0] != "open":
                    return False
                await conn.execute(_TAKE, (client, slot))
            return True
        except errors.SerializationFailure:
            out.retries += 1
            cap = min(BACKOFF_CAP_S, BACKOFF_S * 2**tries)
            await asyncio.sleep(random.uniform(0, cap))
    return None


async def claim_conditional(
    conn: psycopg.AsyncConnection[Any], slot: str, client: str, out: Claims
) -> bool | None:
    """One conditional UPDATE in autocommit: True when it changed the row."""
    cur = await conn.execute(_TAKE_IF_OPEN, (client, slot))
    return cur.rowcount == 1


PEERS: dict[str, tuple[Claim, str]] = {
    "serializable": (claim_serializable, "SERIALIZABLE read-then-write with retries"),
    "conditional": (claim_conditional, "conditional UPDATE ... WHERE slot_id AND state='open'"),
}


async def _configure_serializable(conn: psycopg.AsyncConnection[Any]) -> None:
    await conn.set_isolation_level(psycopg.IsolationLevel.SERIALIZABLE)
    await conn.set_autocommit(False)


async def _configure_autocommit(conn: psycopg.AsyncConnection[Any]) -> None:
    await conn.set_autocommit(True)


async def seed(url: str, run: int) -> list[str]:
    """A fresh `claim_slots` table of BROADCASTS x SLOTS_PER_BROADCAST open slots; their ids."""
    slots = [
        (f"r{run}-b{b}-s{s:03d}", f"r{run}-b{b}")
        for b in range(BROADCASTS)
        for s in range(SLOTS_PER_BROADCAST)
    ]
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("DROP TABLE IF EXISTS claim_slots")
        await conn.execute(_TABLE)
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO claim_slots (slot_id, broadcast_id, state) VALUES (%s, %s, 'open')",
                slots,
            )
        await conn.execute("VACUUM ANALYZE claim_slots")
    return [s for s, _ in slots]


async def race(url: str, peer: str, slots: Sequence[str]) -> Claims:
    """CLIENTS clients over one pool race for `slots` with `peer`'s claim until all are won."""
    claim, _ = PEERS[peer]
    configure = _configure_serializable if peer == "serializable" else _configure_autocommit
    out, open_slots = Claims(peer), set(slots)
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        url, min_size=POOL_SIZE, max_size=POOL_SIZE, open=False, configure=configure
    )
    await pool.open(wait=True, timeout=10)

    async def client(name: str, rng: random.Random) -> None:
        while open_slots:
            slot = rng.choice(tuple(open_slots))
            began = time.monotonic()
            async with pool.connection() as conn:
                won = await claim(conn, slot, name, out)
            out.latencies.append(time.monotonic() - began)
            if won is None:
                out.errors += 1
                continue
            if won:
                out.wins.setdefault(slot, []).append(name)
            else:
                out.lost += 1
            open_slots.discard(slot)

    cpu, load, began = time.process_time(), os.getloadavg()[0], time.monotonic()
    await asyncio.gather(*(client(f"t-{i:04d}", random.Random(i)) for i in range(CLIENTS)))
    out.wall = time.monotonic() - began
    out.client_cpu_s, out.load = time.process_time() - cpu, (load, os.getloadavg()[0])
    await pool.close()
    out.winners_ok = await _one_winner_each(url, slots, out)
    return out


async def _one_winner_each(url: str, slots: Sequence[str], out: Claims) -> bool:
    """Every slot accepted in PostgreSQL, by the one client (and only one) told it won."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT slot_id, state, assignee FROM claim_slots WHERE slot_id = ANY(%s)",
            (list(slots),),
        )
        rows = await cur.fetchall()
    held = {slot: assignee for slot, state, assignee in rows if state == "accepted"}
    return len(held) == len(slots) and all(
        out.wins.get(slot) == [assignee] for slot, assignee in held.items()
    )


async def measure(url: str, runs: int) -> dict[str, list[Claims]]:
    """`runs` races of each peer, alternating (serializable, conditional, serializable, ...),
    each over a fresh table in the database at `url`."""
    results: dict[str, list[Claims]] = {peer: [] for peer in PEERS}
    for run in range(runs):
        for peer in PEERS:
            slots = await seed(url, run)
            results[peer].append(await race(url, peer, slots))
    return results
