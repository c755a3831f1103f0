"""A customer: search, watch the broadcast, sometimes cancel it (and cancel every filled one
after a while, which frees its drivers), then search again.

Searches go with an `Idempotency-Key` most of the time, some are sent twice with the same key
(a retry after a lost answer), and some unkeyed ones are double taps of an identical body.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from chaos.api import Api, Party, error_code, outcome

PICKUP_LAT, PICKUP_LNG = 12.97, 77.59
PICKUP = {"lat": PICKUP_LAT, "lng": PICKUP_LNG, "address": "MG Road"}
DROP = {"lat": 13.03, "lng": 77.62, "address": "Hebbal"}
FAR_AWAY = {"lat": 28.61, "lng": 77.21, "address": "Connaught Place"}
ACTIVE = ("created", "broadcasting", "partially_filled")
ENDED = ("expired", "cancelled")
POLL_S = 1.2
MAX_CYCLES = 10_000


class Customer:
    def __init__(self, party: Party, api: Api, types: tuple[str, ...], rng: random.Random) -> None:
        self.party, self.api, self.types, self.rng = party, api, types, rng

    async def run(self, until: float) -> None:
        for _ in range(MAX_CYCLES):
            if time.time() >= until:
                return
            broadcast = await self._search()
            if broadcast is not None:
                await self._follow(broadcast, until)
            await asyncio.sleep(self.rng.uniform(0.5, 2.0))

    def _search_body(self) -> dict[str, Any]:
        kinds = self.rng.sample(self.types, self.rng.choice((1, 1, 2)))
        trucks = [{"vehicleType": t, "quantity": self.rng.randint(1, 2)} for t in kinds]
        pickup = FAR_AWAY if self.rng.random() < 0.1 else PICKUP
        return {"pickup": pickup, "drop": DROP, "trucks": trucks, "note": f"n{self.rng.random()}"}

    async def _search(self) -> str | None:
        """Search once (a chain); the broadcast to follow, if any."""
        body, keyed = self._search_body(), self.rng.random() < 0.7
        attempts = await self.api.chain(
            self.party, "search", "POST", "/v1/broadcasts", body, keyed=keyed
        )
        decided = outcome(attempts)
        if decided is not None and keyed and self.rng.random() < 0.15:
            await self.api.call(
                self.party, "search", "POST", "/v1/broadcasts", body,
                key=attempts[0].key, chain=attempts[0].chain,
            )  # fmt: skip
        if decided is not None and decided.status == 201 and not keyed and self.rng.random() < 0.2:
            await self.api.call(self.party, "search_tap", "POST", "/v1/broadcasts", body)
        if decided is None:
            return await self._active()
        if decided.status in (200, 201):
            return str(decided.response["broadcastId"])
        if error_code(decided) == "active_broadcast_exists":
            return str(decided.response["error"]["broadcastId"])
        return None

    async def _active(self) -> str | None:
        found = await self.api.call(self.party, "read", "GET", "/v1/customers/me/broadcasts/active")
        if found.status == 200:
            return str(found.response["broadcastId"])
        return None

    async def _follow(self, broadcast: str, until: float) -> None:
        """Poll the broadcast until it ends; cancel it on a whim, or a while after it filled."""
        cancel_at = time.time() + self.rng.uniform(1, 6) if self.rng.random() < 0.3 else None
        cancels = 0
        while time.time() < until:
            state = await self._state(broadcast)
            if state in ENDED:
                return
            if state == "fully_filled" and cancel_at is None:
                cancel_at = time.time() + self.rng.uniform(2, 8)
            if cancel_at is not None and time.time() >= cancel_at and cancels < 3:
                cancels += 1
                if await self._cancel(broadcast):
                    return
            await asyncio.sleep(POLL_S)

    async def _state(self, broadcast: str) -> str | None:
        read = await self.api.call(self.party, "read", "GET", f"/v1/broadcasts/{broadcast}")
        return str(read.response["state"]) if read.status == 200 else None

    async def _cancel(self, broadcast: str) -> bool:
        """Cancel (a chain); whether the broadcast is known to have ended."""
        body = {"reason": "changed plans"} if self.rng.random() < 0.5 else {}
        attempts = await self.api.chain(
            self.party,
            "cancel",
            "POST",
            f"/v1/broadcasts/{broadcast}/cancel",
            body,
            keyed=self.rng.random() < 0.7,
        )
        decided = outcome(attempts)
        return decided is not None and decided.status in (200, 409)
