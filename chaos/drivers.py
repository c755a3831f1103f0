"""A driver: goes online, heartbeats every second or two, now and then goes offline for a few
seconds, and now and then says again what it wants to be (a repeat, or back online after the
TTL sweep turned it offline while its requests could not get through)."""

from __future__ import annotations

import asyncio
import random
import time

from chaos.api import Api, Party

MAX_ROUNDS = 100_000


class Driver:
    def __init__(self, party: Party, api: Api, rng: random.Random) -> None:
        self.party, self.api, self.rng = party, api, rng

    async def run(self, until: float) -> None:
        await self._available(True)
        for _ in range(MAX_ROUNDS):
            if time.time() >= until:
                return
            roll = self.rng.random()
            if roll < 0.04:
                await self._available(False)
                await asyncio.sleep(self.rng.uniform(2, 5))
                await self._available(True)
            elif roll < 0.12:
                await self._available(True)
            else:
                await self.api.call(self.party, "heartbeat", "POST", "/v1/drivers/me/heartbeat")
            await asyncio.sleep(self.rng.uniform(1.0, 2.5))

    async def _available(self, online: bool) -> None:
        await self.api.call(
            self.party, "availability", "PUT", "/v1/drivers/me/availability", {"online": online}
        )
