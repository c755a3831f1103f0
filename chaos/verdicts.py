"""Violations as the checks report them: a kind and an example line, collected per kind."""

from __future__ import annotations

from dataclasses import dataclass, field

from chaos.records import Attempt

KINDS = {
    "slot_won_twice": "a truck request won by two claims, or two 200 accepts naming it",
    "two_active_broadcasts": "a customer held two active broadcasts at once",
    "driver_two_active": "a driver on two active assignments at once",
    "vehicle_two_active": "a vehicle on two active assignments at once",
    "success_without_effect": "a 2xx whose effect is not in PostgreSQL",
    "unavailable_with_effect": "a 503 (or other 5xx) whose change was made anyway",
    "refusal_with_effect": "a 4xx refusal whose change was made anyway",
    "effect_without_request": "a change no request explains",
    "retry_new_decision": "a keyed retry answered a new decision after an attempt took effect",
    "retry_answer_differs": "a keyed retry answered differently from the key's first outcome",
    "double_tap_new_broadcast": "an identical unkeyed search while active created a second one",
    "unexpected_status": "a status the contract does not list for the route",
    "event_sequence_invalid": "a broadcast's events break the state machine",
    "read_model_mismatch": "a read-model row disagrees with the event store",
    "expired_twice": "two broadcast_expired events for one broadcast",
    "expiry_late": "an expiry more than 1 s after expiresAt (timer and dependency outages excused)",
    "expiry_missing": "an active broadcast long past its expiresAt",
    "event_not_on_stream": "a committed, relayed event missing from its Redis stream",
    "outbox_stuck": "events committed over 10 s ago still waiting in the outbox",
    "message_missing": "a message for a connected user neither received nor resync_required",
    "message_doubled": "a message received more often than it was sent",
    "message_doubled_after_redis_loss": "the same, within 90 s after Redis lost data",
    "message_out_of_order": "a broadcast's messages received out of event order",
    "message_content_wrong": "a broadcast_state_changed with a wrong previousState, endReason,"
    " filled or total",
    "message_unexpected": "a message the event store says this user was never sent",
    "event_id_twice": "one eventId twice on one socket",
    "role_move_slow": "a single-holder role not moved within 10 s of its holder's kill/freeze",
    "redis_memory_high": "Redis memory not back near idle after the trim interval",
}


@dataclass
class Verdicts:
    found: dict[str, list[str]] = field(default_factory=dict)
    stats: dict[str, str] = field(default_factory=dict)

    def add(self, kind: str, example: str) -> None:
        assert kind in KINDS, kind
        self.found.setdefault(kind, []).append(example)

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.found.values())


def show(a: Attempt) -> str:
    """An attempt in one line: id, who, what, when, answer."""
    answer = f"{a.status}" if a.status is not None else f"no answer ({a.error})"
    code = ""
    if isinstance(a.response, dict) and isinstance(a.response.get("error"), dict):
        code = f" {a.response['error'].get('code')}"
    key = f" key={a.key[:8]}" if a.key else ""
    took = f"{a.answered - a.sent:.2f}s" if a.answered is not None else "-"
    where = f"#{a.id} {a.actor} {a.method} {a.path}{key}"
    return f"{where} sent={a.sent:.3f} took={took} -> {answer}{code}"
