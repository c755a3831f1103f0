"""The gateway's memory of which broadcast each truck request belongs to."""

from __future__ import annotations


class TruckRequestIndex:
    """Which broadcast each truck request belongs to, as found: that never changes after the
    request is created, so 200 transporters racing for one slot read it from PostgreSQL once.
    Keeps the last `size` found (a few MB at the default)."""

    def __init__(self, size: int = 50_000) -> None:
        self._found: dict[str, str] = {}
        self._size = size

    def get(self, truck_request_id: str) -> str | None:
        return self._found.get(truck_request_id)

    def remember(self, truck_request_id: str, broadcast_id: str) -> None:
        self._found[truck_request_id] = broadcast_id
        if len(self._found) > self._size:
            del self._found[next(iter(self._found))]  # the oldest
