"""Commands packed by hiredis reach a real Redis intact: every argument type the services send,
single commands, pipelines and scripts, on the services' own connection pool, whether the URL
names a TCP Redis (`redis://`) or a unix socket (`unix://`, the embedded Redis)."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)

from libs.runtime.redis_client import redis_pool
from libs.runtime.resp import packing_in_c

ARGS = ("SET", "k", b"a b\r\n\x00\xff", 7, 1.5, "ü")


def expected_class(url: str) -> type[AbstractConnection]:
    """The connection class redis-py picks for `url`'s scheme."""
    scheme = url.split("://", 1)[0]
    return {"unix": UnixDomainSocketConnection, "rediss": SSLConnection}.get(scheme, Connection)


@pytest.mark.parametrize("base", [Connection, SSLConnection, UnixDomainSocketConnection])
def test_every_connection_class_keeps_its_transport_and_packs_in_c(
    base: type[AbstractConnection],
) -> None:
    """The packed class is still the class it wraps (TCP, TLS or unix socket) and packs a command
    to the same bytes as redis-py's own Python packer."""
    packed = packing_in_c(base)
    assert issubclass(packed, base)
    assert packed.__name__ == f"HiredisPacked{base.__name__}"
    assert packed.pack_command is not base.pack_command
    in_c = b"".join(packed().pack_command(*ARGS))
    in_python = b"".join(base().pack_command(*ARGS))
    assert in_c == in_python


async def test_commands_packed_in_c_round_trip(redis_url: str, prefix: str) -> None:
    """str, bytes (with spaces, CRLF and NUL), int and float arguments arrive unchanged, on the
    connection class of the URL's scheme with commands packed by hiredis."""
    client = Redis(connection_pool=redis_pool(redis_url))
    key = prefix + "packed"
    try:
        connection = await client.connection_pool.get_connection()
        base = expected_class(redis_url)
        assert isinstance(connection, base)
        assert type(connection).__name__ == f"HiredisPacked{base.__name__}"
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
