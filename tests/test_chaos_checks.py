"""The chaos soak's checker judges what the contract promises, no more: pure tests of its rules
on hand-made records (the soak itself is tests/test_chaos.py)."""

from __future__ import annotations

from typing import Any

from chaos.fold import Broadcast, Folded, Step
from chaos.records import Attempt
from chaos.requests_check import _double_taps
from chaos.store import Event
from chaos.verdicts import Verdicts

CUSTOMER = "customer:c1"


def _search(id_: int, kind: str, sent: float, broadcast_id: str) -> Attempt:
    return Attempt(
        id=id_, chain=id_, actor=CUSTOMER, kind=kind, method="POST", path="/v1/broadcasts",
        gateway=0, key=None, body={}, sent=sent, answered=sent + 0.1, status=201,
        response={"broadcastId": broadcast_id},
    )  # fmt: skip


def _event(at: float, kind: str, stream: str) -> Event:
    data: dict[str, Any] = {}
    return Event(0, stream, 1, f"e-{stream}-{at}", kind, data, int(at * 1e6))


def _broadcast(id_: int, created: float, expired: float | None) -> Broadcast:
    stream = f"broadcast-b{id_}"
    b = Broadcast(
        f"b{id_}", CUSTOMER, _event(created, "BroadcastCreated", stream), created + 10, {}
    )
    if expired is not None:
        b.steps.append(Step(_event(expired, "BroadcastExpired", stream), "searching", "expired", 0))
    return b


def _verdicts(first_expired: float | None, tap_created: float) -> Verdicts:
    """A search at 100 s, an identical one sent 70 ms later that took effect at `tap_created`."""
    first, tap = _broadcast(1, 100.0, first_expired), _broadcast(2, tap_created, None)
    folded = Folded(broadcasts={"b1": first, "b2": tap})
    chains = [[_search(1, "search", 100.0, "b1")], [_search(2, "search_tap", 100.07, "b2")]]
    out = Verdicts()
    _double_taps(out, chains, folded)
    return out


def test_a_tap_held_up_past_the_first_broadcasts_end_may_create_a_new_one() -> None:
    """Sent while the first was active but created after it expired (a frozen gateway held the
    request 14 s, the first expired at 10 s): no violation. This is what CI's soak reported."""
    assert _verdicts(first_expired=110.0, tap_created=114.0).found == {}


def test_a_tap_that_created_a_broadcast_while_the_first_was_active_is_a_violation() -> None:
    """Created before the first ended (or while it never ended): `double_tap_new_broadcast`."""
    assert "double_tap_new_broadcast" in _verdicts(first_expired=110.0, tap_created=100.2).found
    assert "double_tap_new_broadcast" in _verdicts(first_expired=None, tap_created=114.0).found
