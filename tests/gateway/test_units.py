"""Pure pieces of the gateway: the rate limit buckets, msgspec error paths, the search hash."""

from __future__ import annotations

import msgspec
import pytest
from redis.asyncio import Redis
from structlog.testing import capture_logs

from libs.local.probes import free_port
from services.gateway.bodies import CreateBroadcastBody, field_problem
from services.gateway.broadcasts import search_hash
from services.gateway.ratelimit import REDIS_RETRY_S, RateLimiter, SharedLimiter
from services.gateway.truck_requests import TruckRequestIndex


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_a_burst_then_waits_for_refill() -> None:
    """A caller may spend `per_minute` at once, then one more per 60/per_minute seconds."""
    clock = Clock()
    limiter = RateLimiter(60, clock)
    assert all(limiter.take("a") == 0 for _ in range(60))
    assert limiter.take("a") == pytest.approx(1.0)
    assert limiter.take("b") == 0
    clock.now += 1.0
    assert limiter.take("a") == 0
    assert limiter.take("a") > 0


async def test_shared_limiter_counts_in_process_while_redis_is_unreachable() -> None:
    """With nothing listening at the Redis URL the limit is counted in-process, logged once,
    and Redis is asked again (logged again) only after REDIS_RETRY_S."""
    clock = Clock()
    redis = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    limiter = SharedLimiter(redis, "unit:", 3, clock)
    try:
        with capture_logs() as logs:
            waits = [await limiter.take("a") for _ in range(4)]
            clock.now += REDIS_RETRY_S
            assert await limiter.take("b") == 0
    finally:
        await redis.aclose()
    assert waits[:3] == [0, 0, 0] and waits[3] > 0
    mine = [e["event"] for e in logs if e["event"].startswith("rate_limit")]
    assert mine == ["rate_limit_in_process"] * 2


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ("Expected `float` <= 90.0 - at `$.pickup.lat`", "pickup.lat"),
        ("Object missing required field `lat` - at `$.pickup`", "pickup.lat"),
        ("Object missing required field `trucks`", "trucks"),
        ("Object contains unknown field `x` - at `$.trucks[1]`", "trucks[1].x"),
        ("Expected `object`, got `array`", "body"),
    ],
)
def test_field_problem_names_the_json_path(message: str, field: str) -> None:
    """msgspec's error message becomes the camelCase field path the client sent."""
    assert field_problem(message)[0] == field


def _body(trucks: list[dict[str, object]]) -> CreateBroadcastBody:
    raw = {"pickup": {"lat": 1, "lng": 2}, "drop": {"lat": 3, "lng": 4}, "trucks": trucks}
    return msgspec.json.decode(msgspec.json.encode(raw), type=CreateBroadcastBody)


def test_search_hash_is_stable_and_order_free() -> None:
    """The same search hashes the same, whatever the order of its trucks; another differs."""
    a = {"vehicleType": "a", "quantity": 1}
    b = {"vehicleType": "b", "quantity": 2}
    assert search_hash(_body([a, b])) == search_hash(_body([b, a]))
    assert search_hash(_body([a])) != search_hash(_body([a, b]))


def test_truck_request_index_keeps_the_newest_it_found() -> None:
    """The index answers what it was told, and past its size forgets the oldest first."""
    index = TruckRequestIndex(size=2)
    index.remember("r1", "b1")
    index.remember("r2", "b1")
    assert (index.get("r1"), index.get("r2"), index.get("r3")) == ("b1", "b1", None)
    index.remember("r3", "b2")
    assert (index.get("r1"), index.get("r2"), index.get("r3")) == (None, "b1", "b2")
