"""The public HTTP API as the workload's clients use it, every attempt logged.

`Api.chain` sends one logical request: with an `Idempotency-Key`, a 5xx, a connection error or
a timeout (and `409 request_in_flight`) is retried later with the same key and body, on the
other gateway; every attempt and its answer is one `Attempt` in the run log.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from chaos.records import Attempt, RunLog

TIMEOUT_S = 15.0  # above the gateway's command deadline plus its settling of an abandoned attempt
MAX_ATTEMPTS = 6
CHAIN_WITHIN_S = 50.0


@dataclass(frozen=True)
class Party:
    role: str
    sub: str
    token: str

    @property
    def user(self) -> str:
        return f"{self.role}:{self.sub}"


def error_code(attempt: Attempt) -> str | None:
    """The contract's `error.code` of an answer, if it is an error body."""
    body = attempt.response
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        code = body["error"].get("code")
        return code if isinstance(code, str) else None
    return None


def needs_retry(attempt: Attempt) -> bool:
    """No outcome yet: no answer, a 5xx, or the key's first attempt still running."""
    if attempt.status is None or attempt.status >= 500:
        return True
    return attempt.status == 409 and error_code(attempt) == "request_in_flight"


class Api:
    def __init__(self, client: httpx.AsyncClient, gateways: Sequence[str], log: RunLog) -> None:
        self.client, self.gateways, self.log = client, list(gateways), log

    async def call(
        self,
        party: Party,
        kind: str,
        method: str,
        path: str,
        body: Any = None,
        *,
        key: str | None = None,
        chain: int | None = None,
        gateway: int | None = None,
    ) -> Attempt:
        """One request; its attempt is logged whatever happens."""
        gw = random.randrange(len(self.gateways)) if gateway is None else gateway
        ident = self.log.next_id()
        # The attempt's id as the request's correlation id: the services' logs name it.
        headers = {"Authorization": f"Bearer {party.token}", "X-Request-ID": f"chaos-{ident}"}
        if key is not None:
            headers["Idempotency-Key"] = key
        sent = time.time()
        fields: dict[str, Any] = {}
        try:
            response = await self.client.request(
                method, f"http://{self.gateways[gw]}{path}", json=body, headers=headers
            )
            fields = _answer(response)
        except (httpx.HTTPError, OSError) as e:
            fields = {"answered": None, "status": None, "error": type(e).__name__}
        attempt = Attempt(
            id=ident,
            chain=ident if chain is None else chain,
            actor=party.user,
            kind=kind,
            method=method,
            path=path,
            gateway=gw,
            key=key,
            body=body,
            sent=sent,
            **fields,
        )
        self.log.attempts.append(attempt)
        return attempt

    async def chain(
        self, party: Party, kind: str, method: str, path: str, body: Any = None, *, keyed: bool
    ) -> list[Attempt]:
        """One logical request; keyed ones are retried until they have an outcome (bounded)."""
        key = uuid.uuid4().hex if keyed else None
        first = await self.call(party, kind, method, path, body, key=key)
        attempts = [first]
        while keyed and needs_retry(attempts[-1]) and len(attempts) < MAX_ATTEMPTS:
            if time.time() - first.sent > CHAIN_WITHIN_S:
                break
            await asyncio.sleep(random.uniform(1.0, 3.0))
            other = (attempts[-1].gateway + 1) % len(self.gateways)
            attempts.append(
                await self.call(
                    party, kind, method, path, body, key=key, chain=first.chain, gateway=other
                )
            )
        return attempts


def _answer(response: httpx.Response) -> dict[str, Any]:
    body: Any
    try:
        body = response.json() if response.content else None
    except ValueError:
        body = response.text[:500]
    return {
        "answered": time.time(),
        "status": response.status_code,
        "response": body,
        "replayed": response.headers.get("idempotent-replayed") == "true",
    }


def outcome(attempts: Sequence[Attempt]) -> Attempt | None:
    """The chain's decisive answer: its first that is neither 5xx, missing, nor in flight."""
    for attempt in attempts:
        if not needs_retry(attempt):
            return attempt
    return None


def new_client() -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=60, max_keepalive_connections=30)
    return httpx.AsyncClient(timeout=TIMEOUT_S, limits=limits, trust_env=False)
