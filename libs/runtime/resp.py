"""Redis commands packed by hiredis's C packer.

redis-py's asyncio connections pack every command in Python (its synchronous ones use hiredis
when installed). The gateway sends hundreds of inbox scripts per claim, and packing them was a
fifth of its CPU in the accept-storm benchmark; hiredis's `pack_command` makes it negligible.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.connection import HiredisRespSerializer

_SERIALIZER = HiredisRespSerializer()


def packing_in_c(connection_class: type[AbstractConnection]) -> type[AbstractConnection]:
    """`connection_class` (plain, TLS or unix socket) with commands packed by hiredis."""

    class Packed(connection_class):  # type: ignore[valid-type, misc]
        def pack_command(self, *args: Any) -> list[bytes]:
            packed: list[bytes] = _SERIALIZER.pack(*args)
            return packed

    Packed.__name__ = f"HiredisPacked{connection_class.__name__}"
    return Packed
