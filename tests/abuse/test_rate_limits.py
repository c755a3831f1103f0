"""Rate limits against two real gateway processes sharing one Redis (issue 11, "contract-silent").

A caller's `RATE_LIMIT_PER_MINUTE` holds for all gateways together, and failed authentications
are limited per client address (`AUTH_FAILURES_PER_MINUTE`), also together. The address is the
TCP peer's: distinct loopback addresses (127.0.0.x) stand for distinct clients, and
`X-Forwarded-For` counts only from a peer named in `FORWARDED_ALLOW_IPS`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from itertools import cycle

import httpx
import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from libs.runtime.tokens import issue
from tests.gateway.conftest import Gateway, new_id, started
from tests.processes import free_port

CALLS_PER_MINUTE = 4
FAILURES_PER_MINUTE = 3
PROXY = "127.0.0.3"  # the one peer whose X-Forwarded-For the gateways trust
ACTIVE = "/v1/customers/me/broadcasts/active"  # a read: 404 while the customer has none


@pytest.fixture(scope="module")
def gateways(
    service_env_module: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gateway, Gateway]]:
    """Two gateway processes on one Redis key prefix, with small limits."""
    env = {
        **service_env_module,
        "RATE_LIMIT_PER_MINUTE": str(CALLS_PER_MINUTE),
        "AUTH_FAILURES_PER_MINUTE": str(FAILURES_PER_MINUTE),
        "FORWARDED_ALLOW_IPS": PROXY,
    }
    logs = tmp_path_factory.mktemp("rate-limits")
    with started(env, logs) as first, started(env, logs) as second:
        yield first, second


class Clients:
    """HTTP clients bound to a source address, one per gateway, used in turn."""

    def __init__(self, gateways: tuple[Gateway, Gateway], address: str) -> None:
        self.all = [
            httpx.AsyncClient(
                base_url=gateway.url,
                transport=httpx.AsyncHTTPTransport(local_address=address),
                timeout=10,
            )
            for gateway in gateways
        ]
        self._turns = cycle(self.all)

    def next(self) -> httpx.AsyncClient:
        return next(self._turns)

    async def aclose(self) -> None:
        for client in self.all:
            await client.aclose()


Addresses = Callable[[str], Clients]


@pytest.fixture
async def clients(gateways: tuple[Gateway, Gateway]) -> AsyncIterator[Addresses]:
    """The clients of a source address, made on first use and closed after the test."""
    made: dict[str, Clients] = {}

    def at(address: str) -> Clients:
        if address not in made:
            made[address] = Clients(gateways, address)
        return made[address]

    yield at
    for each in made.values():
        await each.aclose()


def assert_rate_limited(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert response.json()["error"]["code"] == "rate_limited"
    assert int(response.headers["retry-after"]) >= 1


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def bad_tokens(gateway: Gateway) -> list[dict[str, str]]:
    """Headers of a request that fails authentication, one of each kind."""
    sub = new_id("c")
    return [
        {},
        bearer(issue("not-the-gateways-secret-" + "x" * 32, role="customer", sub=sub, ttl_s=60)),
        bearer(issue(gateway.access_secret, role="customer", sub=sub, ttl_s=-60)),
        {"Authorization": "Basic dXNlcjpwYXNz"},
    ]


async def test_caller_limit_holds_across_gateways(
    gateways: tuple[Gateway, Gateway], clients: Addresses
) -> None:
    """Requests of one caller spread over two gateways are limited at RATE_LIMIT_PER_MINUTE in
    all, not that many per gateway; another caller is unaffected on either gateway."""
    greedy, modest = gateways[0].auth("customer"), gateways[0].auth("customer")
    spread = clients("127.0.0.1")
    for _ in range(CALLS_PER_MINUTE):
        assert (await spread.next().get(ACTIVE, headers=greedy)).status_code == 404
    for client in spread.all:
        assert_rate_limited(await client.get(ACTIVE, headers=greedy))
    for client in spread.all:
        assert (await client.get(ACTIVE, headers=modest)).status_code == 404


async def test_limit_keys_expire_within_a_minute(
    gateways: tuple[Gateway, Gateway], clients: Addresses, redis_url: str
) -> None:
    """The limits' Redis keys live under REDIS_KEY_PREFIX and expire within a minute: Redis
    holds state of recent callers and addresses only, not of the traffic served."""
    prefix = gateways[0].prefix
    await clients("127.0.0.1").next().get(ACTIVE, headers=gateways[0].auth("customer"))
    await clients("127.0.0.20").next().get(ACTIVE)
    redis = Redis.from_url(redis_url)
    try:
        keys = [k async for k in redis.scan_iter(match=f"{prefix}ratelimit:*", count=1000)]
        assert keys
        ttls = [await redis.pttl(k) for k in keys]
    finally:
        await redis.aclose()
    assert all(0 < ttl <= 60_000 for ttl in ttls), ttls


async def test_failed_authentications_are_limited_per_address(
    gateways: tuple[Gateway, Gateway], clients: Addresses
) -> None:
    """Failed authentications of any kind (no token, bad signature, expired, another scheme, a
    refused refresh token) from one address, spread over both gateways, get 429 rate_limited
    past AUTH_FAILURES_PER_MINUTE; that address's valid tokens and other addresses still pass."""
    attacker, bystander = clients("127.0.0.10"), clients("127.0.0.11")
    failures = bad_tokens(gateways[0])
    for headers in failures[:FAILURES_PER_MINUTE]:
        assert (await attacker.next().get(ACTIVE, headers=headers)).status_code == 401
    for headers in failures:
        assert_rate_limited(await attacker.next().get(ACTIVE, headers=headers))
    refresh = {"refreshToken": gateways[0].token("customer")}  # an access token: refused
    for client in attacker.all:
        assert_rate_limited(await client.post("/v1/auth/refresh", json=refresh))
        valid = await client.get(ACTIVE, headers=gateways[0].auth("customer"))
        assert valid.status_code == 404
    assert (await bystander.next().post("/v1/auth/refresh", json=refresh)).status_code == 401
    assert (await bystander.next().get(ACTIVE, headers=failures[1])).status_code == 401


async def test_refused_socket_upgrades_count_as_failures(
    gateways: tuple[Gateway, Gateway], clients: Addresses
) -> None:
    """A WebSocket upgrade refused for its token counts against the address, and is refused
    with 429 rate_limited (before any upgrade) once the address is past the limit."""
    address = "127.0.0.12"
    url = gateways[1].url.replace("http://", "ws://", 1) + "/v1/ws?token=nonsense"
    statuses = []
    for _ in range(FAILURES_PER_MINUTE + 1):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(url, open_timeout=10, local_addr=(address, 0)):
                pass
        statuses.append(refused.value.response.status_code)
    assert statuses == [401] * FAILURES_PER_MINUTE + [429]
    assert_rate_limited(await clients(address).next().get(ACTIVE))


async def spoofing_failures(client: httpx.AsyncClient, count: int) -> list[int]:
    """The statuses of `count` failed authentications, each naming another X-Forwarded-For."""
    statuses = []
    for n in range(count):
        forwarded = {"X-Forwarded-For": f"203.0.113.{n + 1}"}
        statuses.append((await client.get(ACTIVE, headers=forwarded)).status_code)
    return statuses


async def test_forwarded_for_from_a_peer_not_trusted_is_ignored(
    gateways: tuple[Gateway, Gateway], clients: Addresses
) -> None:
    """A peer not in FORWARDED_ALLOW_IPS cannot escape the failure limit by sending a new
    X-Forwarded-For each time: its own address counts."""
    statuses = await spoofing_failures(clients("127.0.0.13").next(), FAILURES_PER_MINUTE + 2)
    assert statuses == [401] * FAILURES_PER_MINUTE + [429, 429]


async def test_bare_gateway_trusts_no_forwarded_for(
    service_env_module: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Without FORWARDED_ALLOW_IPS a gateway trusts no X-Forwarded-For, not even from a local
    peer (uvicorn's own default trusts 127.0.0.1): a local client cannot escape the limit."""
    env = {**service_env_module, "AUTH_FAILURES_PER_MINUTE": str(FAILURES_PER_MINUTE)}
    env.pop("FORWARDED_ALLOW_IPS", None)
    with started(env, tmp_path_factory.mktemp("rate-limits-bare")) as gateway:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
            statuses = await spoofing_failures(client, FAILURES_PER_MINUTE + 2)
        assert statuses == [401] * FAILURES_PER_MINUTE + [429, 429]


async def test_trusted_proxy_forwarded_for_names_the_client(
    gateways: tuple[Gateway, Gateway], clients: Addresses
) -> None:
    """Behind a proxy in FORWARDED_ALLOW_IPS, failures count against the address the proxy
    appended to X-Forwarded-For: clients behind it do not share one limit, and an address the
    client itself put in front of the header is ignored."""
    proxy = clients(PROXY)
    client, other = {"X-Forwarded-For": "198.51.100.7"}, {"X-Forwarded-For": "198.51.100.8"}
    for _ in range(FAILURES_PER_MINUTE):
        assert (await proxy.next().get(ACTIVE, headers=client)).status_code == 401
    assert_rate_limited(await proxy.next().get(ACTIVE, headers=client))
    assert (await proxy.next().get(ACTIVE, headers=other)).status_code == 401
    spoofed = {"X-Forwarded-For": "198.51.100.8, 198.51.100.7"}
    assert_rate_limited(await proxy.next().get(ACTIVE, headers=spoofed))


async def test_limits_hold_in_process_while_redis_is_unreachable(
    service_env_module: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """With Redis unreachable, each gateway still limits callers and failed authentications
    itself (the in-process bucket) instead of letting everything through."""
    env = {
        **service_env_module,
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "RATE_LIMIT_PER_MINUTE": str(CALLS_PER_MINUTE),
        "AUTH_FAILURES_PER_MINUTE": str(FAILURES_PER_MINUTE),
    }
    logs = tmp_path_factory.mktemp("rate-limits-no-redis")
    with started(env, logs, healthy=False) as gateway:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
            caller = gateway.auth("customer")
            calls = [(await client.get(ACTIVE, headers=caller)).status_code for _ in range(5)]
            assert calls == [404] * CALLS_PER_MINUTE + [429]
            failed = [(await client.get(ACTIVE)).status_code for _ in range(4)]
            assert failed == [401] * FAILURES_PER_MINUTE + [429]
