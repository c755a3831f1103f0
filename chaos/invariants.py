"""What must hold in PostgreSQL whatever the clients saw (sections 4-6, 8): one winner per slot,
one active broadcast per customer, one active assignment per driver and per vehicle, each
broadcast's events a walk of the state machine, read models equal to the event store."""

from __future__ import annotations

from collections import defaultdict

from chaos.fold import ACTIVE, NEXT_STATES, Assignment, Broadcast, Folded
from chaos.store import Event, Store
from chaos.verdicts import Verdicts

DB_ACTIVE = ("created", "broadcasting", "partially_filled")


def check_invariants(out: Verdicts, store: Store, folded: Folded) -> None:
    for b in folded.broadcasts.values():
        _one_winner(out, b)
        _sequence(out, b)
    for e in folded.strays:
        out.add(
            "event_sequence_invalid", f"{e.type} at position {e.position} of an unknown broadcast"
        )
    _one_active_broadcast(out, folded)
    _one_active_assignment(out, store.events)
    _read_models(out, store, folded)


def _one_winner(out: Verdicts, b: Broadcast) -> None:
    for trid, claims in b.wins.items():
        if len(claims) > 1:
            positions = ", ".join(str(e.position) for e in claims)
            out.add("slot_won_twice", f"{trid} of {b.id} claimed at positions {positions}")
        if trid not in b.slots:
            out.add("event_sequence_invalid", f"{b.id}: claim of {trid}, not one of its slots")


def _sequence(out: Verdicts, b: Broadcast) -> None:
    expired = 0
    for i, step in enumerate(b.steps):
        e = step.event
        where = f"{b.id} v{e.version} {e.type} ({step.before} -> {step.after})"
        if e.version != i + 1:
            out.add("event_sequence_invalid", f"{where}: version {e.version}, expected {i + 1}")
        if step.after != step.before and step.after not in NEXT_STATES[step.before]:
            out.add("event_sequence_invalid", f"{where}: not a transition of the state machine")
        if e.type == "slots_accepted" and step.before not in ACTIVE:
            out.add("event_sequence_invalid", f"{where}: a claim on a broadcast not active")
        if e.type == "driver_assigned" and step.before == "cancelled":
            out.add("event_sequence_invalid", f"{where}: a driver put on a cancelled broadcast")
        expired += e.type == "broadcast_expired"
    if expired > 1:
        out.add("expired_twice", f"{b.id}: {expired} broadcast_expired events")


def _one_active_broadcast(out: Verdicts, folded: Folded) -> None:
    """Walk every customer's broadcasts' steps in commit-consistent (position) order."""
    steps = sorted(
        (
            (s.event.position, b.customer, b.id, s)
            for b in folded.broadcasts.values()
            for s in b.steps
        ),
        key=lambda x: x[0],
    )
    active: dict[str, set[str]] = defaultdict(set)
    for position, customer, broadcast, step in steps:
        if step.after in ACTIVE:
            active[customer].add(broadcast)
        else:
            active[customer].discard(broadcast)
        if len(active[customer]) > 1:
            both = ", ".join(sorted(active[customer]))
            out.add("two_active_broadcasts", f"customer {customer} at position {position}: {both}")


def _one_active_assignment(out: Verdicts, events: list[Event]) -> None:
    """Replay driver and vehicle holdings in position order: a holder's new assignment is
    checked after every release committed before it."""
    holder: dict[str, tuple[str, str]] = {}  # assignment: driver, vehicle
    held: dict[str, dict[str, set[str]]] = {"driver": defaultdict(set), "vehicle": defaultdict(set)}
    cancelled: set[str] = set()
    for e in events:
        if e.type == "broadcast_cancelled":
            for c in e.data.get("cancelledAssignments") or []:
                aid = str(c["assignmentId"])
                cancelled.add(aid)
                _release(held, holder.pop(aid, None), aid)
        elif e.type == "driver_assigned":
            aid = str(e.data["assignmentId"])
            _release(held, holder.pop(aid, None), aid)
            if aid in cancelled:
                continue
            pair = (str(e.data["driverId"]), str(e.data["vehicleId"]))
            holder[aid] = pair
            for role, who in zip(("driver", "vehicle"), pair, strict=True):
                held[role][who].add(aid)
                if len(held[role][who]) > 1:
                    what = ", ".join(sorted(held[role][who]))
                    out.add(f"{role}_two_active", f"{role} {who} at position {e.position}: {what}")


def _release(held: dict[str, dict[str, set[str]]], pair: tuple[str, str] | None, aid: str) -> None:
    if pair is not None:
        held["driver"][pair[0]].discard(aid)
        held["vehicle"][pair[1]].discard(aid)


def _read_models(out: Verdicts, store: Store, folded: Folded) -> None:
    _broadcast_rows(out, store, folded)
    for aid, row in store.assignments.items():
        _assignment_row(out, aid, row, folded.assignments.get(aid))
    missing = set(folded.assignments) - set(store.assignments)
    for aid in sorted(missing)[:20]:
        out.add("read_model_mismatch", f"assignment {aid} won in the events has no row")


def _broadcast_rows(out: Verdicts, store: Store, folded: Folded) -> None:
    per_customer: dict[str, list[str]] = defaultdict(list)
    for bid, (customer, state, _) in store.broadcasts.items():
        if state in DB_ACTIVE:
            per_customer[customer].append(bid)
        b = folded.broadcasts.get(bid)
        if b is None or b.state != state:
            out.add("read_model_mismatch", f"broadcast {bid}: row {state}, events {b and b.state}")
    for customer, bids in per_customer.items():
        if len(bids) > 1:
            out.add("two_active_broadcasts", f"customer {customer} now: {', '.join(bids)}")


def _assignment_row(out: Verdicts, aid: str, row: tuple[str, ...], a: Assignment | None) -> None:
    _, trid, transporter, state, driver, vehicle = row
    shown = f"assignment {aid}: row ({trid}, {transporter}, {state}, {driver or None})"
    if a is None:
        out.add("read_model_mismatch", f"{shown}, no slots_accepted event")
        return
    wanted = "cancelled" if a.cancelled else ("driver_assigned" if a.drivers else "accepted")
    if (a.truck_request, a.transporter, wanted) != (trid, transporter, state):
        out.add(
            "read_model_mismatch", f"{shown}, events ({a.truck_request}, {a.transporter}, {wanted})"
        )
    elif a.drivers and not a.cancelled and (driver, vehicle) != a.drivers[-1][:2]:
        out.add("read_model_mismatch", f"{shown}, events put {a.drivers[-1][:2]} on it")
