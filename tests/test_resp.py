"""Commands packed by hiredis reach a real Redis intact: every argument type the services send,
single commands, pipelines and scripts, on the services' own connection pool."""

from __future__ import annotations

from redis.asyncio import Redis

from libs.runtime.service import redis_pool


async def test_commands_packed_in_c_round_trip(redis_url: str, prefix: str) -> None:
    """str, bytes (with spaces, CRLF and NUL), int and float arguments arrive unchanged."""
    client = Redis(connection_pool=redis_pool(redis_url))
    key = prefix + "packed"
    try:
        connection = await client.connection_pool.get_connection()
        assert type(connection).__name__ == "HiredisPackedConnection"
        await client.connection_pool.release(connection)
        value = b"a b\r\n\x00\xff" * 1000
        await client.set(key, value)
        assert await client.get(key) == value
        async with client.pipeline(transaction=False) as pipe:
            pipe.hset(key + ":h", mapping={"i": 7, "f": 1.5, "s": "ü"})
            pipe.hgetall(key + ":h")
            _, fields = await pipe.execute()
        assert fields == {b"i": b"7", b"f": b"1.5", b"s": "ü".encode()}
        script = "return {KEYS[1], ARGV[1], tonumber(ARGV[2]) + 1}"
        assert await client.eval(script, 1, key, "x y", 41) == [key.encode(), b"x y", 42]
    finally:
        await client.delete(key, key + ":h")
        await client.aclose()
