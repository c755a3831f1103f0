"""Every logical request of the clients against the event store: searches, accepts, cancels,
driver assignments and availability (attribution.py holds the rules); keyed replays; statuses
the contract does not list; and two 200 accepts naming one truck request."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

from chaos.api import outcome
from chaos.attribution import (
    Chain,
    Effect,
    Names,
    assign_effects,
    check_replays,
    judge,
    judge_orphans,
)
from chaos.fold import Folded
from chaos.records import Attempt
from chaos.verdicts import Verdicts, show

ALLOWED = {
    "search": {200, 201, 409, 429, 503},
    "search_tap": {200, 201, 409, 429, 503},
    "cancel": {200, 404, 409, 429, 503},
    "accept_one": {200, 403, 404, 409, 429, 503},
    "accept_many": {200, 403, 404, 409, 429, 503},
    "assign": {200, 403, 404, 409, 429, 503},
    "availability": {200, 404, 429, 503},
    "heartbeat": {204, 429, 503},
    "read": {200, 404, 429, 503},
    "fleet": {200, 409, 429, 503},
}
Subject = Callable[[Chain], str | None]


def chains_of(attempts: Sequence[Attempt]) -> list[list[Attempt]]:
    by_chain: dict[int, list[Attempt]] = defaultdict(list)
    for a in attempts:
        by_chain[a.chain].append(a)
    return sorted(by_chain.values(), key=lambda c: c[0].sent)


def check_requests(out: Verdicts, attempts: Sequence[Attempt], folded: Folded) -> None:
    chains = chains_of(attempts)
    for a in attempts:
        if a.status is not None and a.status not in ALLOWED.get(a.kind, set()):
            out.add("unexpected_status", show(a))
    for chain in chains:
        check_replays(out, chain)
    _searches(out, chains, folded)
    _accepts(out, chains, folded)
    _cancels(out, chains, folded)
    _assigns(out, chains, folded)
    _double_taps(out, chains, folded)
    _two_winners(out, chains)


def _judge_subjects(
    out: Verdicts,
    chains: Sequence[Chain],
    effects: dict[str, list[Effect]],
    subject: Subject,
    names: Names,
) -> None:
    """Group chains by subject and judge each group against that subject's effects."""
    grouped: dict[str, list[Chain]] = defaultdict(list)
    for chain in chains:
        if (key := subject(chain)) is not None:
            grouped[key].append(chain)
    for key in sorted(set(grouped) | set(effects)):
        owned, orphans = assign_effects(grouped[key], effects.get(key, []), names)
        exists = {e.ident for e in effects.get(key, [])}
        for chain in grouped[key]:
            judge(out, chain, owned[chain[0].chain], names, exists)
        judge_orphans(out, orphans, key)


def _body_id(field: str) -> Names:
    def names(a: Attempt) -> set[str]:
        return {str(a.response[field])} if isinstance(a.response, dict) else set()

    return names


def _searches(out: Verdicts, chains: Sequence[Chain], folded: Folded) -> None:
    effects: dict[str, list[Effect]] = defaultdict(list)
    for b in folded.broadcasts.values():
        what = f"broadcast {b.id} created (position {b.created.position})"
        effects[f"customer:{b.customer}"].append(Effect(b.created.at, b.id, what))
    searches = [c for c in chains if c[0].kind in ("search", "search_tap")]
    _judge_subjects(out, searches, effects, lambda c: c[0].actor, _body_id("broadcastId"))


def _accepts(out: Verdicts, chains: Sequence[Chain], folded: Folded) -> None:
    effects: dict[str, list[Effect]] = defaultdict(list)
    for a in folded.assignments.values():
        what = f"{a.transporter} won {a.truck_request} as {a.id} (position {a.won.position})"
        effects[f"transporter:{a.transporter}/{a.broadcast}"].append(
            Effect(a.won.at, a.truck_request, what)
        )

    def subject(chain: Chain) -> str | None:
        parts = chain[0].path.split("/")
        if chain[0].kind == "accept_many":
            return f"{chain[0].actor}/{parts[3]}"
        if chain[0].kind == "accept_one":
            broadcast = folded.slot_owner.get(parts[3])
            return f"{chain[0].actor}/{broadcast}" if broadcast else None
        return None

    def names(a: Attempt) -> set[str]:
        return {str(s["truckRequestId"]) for s in a.response["assignments"]}

    _judge_subjects(out, chains, effects, subject, names)


def _cancels(out: Verdicts, chains: Sequence[Chain], folded: Folded) -> None:
    effects: dict[str, list[Effect]] = defaultdict(list)
    for b in folded.broadcasts.values():
        for step in b.steps:
            if step.event.type == "broadcast_cancelled":
                what = f"broadcast {b.id} cancelled (position {step.event.position})"
                effects[b.id].append(Effect(step.event.at, b.id, what))
    cancels = [c for c in chains if c[0].kind == "cancel"]
    _judge_subjects(
        out, cancels, effects, lambda c: c[0].path.split("/")[3], _body_id("broadcastId")
    )


def _assigns(out: Verdicts, chains: Sequence[Chain], folded: Folded) -> None:
    effects: dict[str, list[Effect]] = defaultdict(list)
    for a in folded.assignments.values():
        for driver, vehicle, event in a.drivers:
            what = f"{driver}/{vehicle} put on {a.id} (position {event.position})"
            effects[a.id].append(Effect(event.at, f"{driver}/{vehicle}", what))

    def names(a: Attempt) -> set[str]:
        return {f"{a.body['driverId']}/{a.body['vehicleId']}"}

    assigns = [c for c in chains if c[0].kind == "assign"]
    _judge_subjects(out, assigns, effects, lambda c: c[0].path.split("/")[3], names)


def _double_taps(out: Verdicts, chains: Sequence[Chain], folded: Folded) -> None:
    """An unkeyed identical search while the first is active answers that broadcast (200). It
    is judged when the search took effect (its broadcast's creation), not when it was sent: one
    held up in a frozen gateway past the first's end rightly creates a new one."""
    last_created: dict[str, Attempt] = {}
    for chain in chains:
        a = chain[0]
        if a.kind == "search" and a.status == 201:
            last_created[a.actor] = a
        if a.kind != "search_tap" or a.status != 201 or a.actor not in last_created:
            continue
        first = last_created[a.actor]
        b = folded.broadcasts.get(str(first.response["broadcastId"]))
        ended = (
            [s.event.at for s in b.steps if s.after in ("expired", "cancelled", "fully_filled")]
            if b
            else []
        )
        made = folded.broadcasts.get(str((a.response or {}).get("broadcastId")))
        decided = made.created.at if made is not None else a.sent
        if b is not None and (not ended or ended[0] > decided):
            out.add("double_tap_new_broadcast", f"{show(a)} after {show(first)}")


def _two_winners(out: Verdicts, chains: Sequence[Chain]) -> None:
    winners: dict[str, Attempt] = {}
    for chain in chains:
        decided = outcome(chain)
        if chain[0].kind not in ("accept_one", "accept_many") or decided is None:
            continue
        if decided.status != 200:
            continue
        for s in decided.response["assignments"]:
            trid = str(s["truckRequestId"])
            if trid in winners:
                out.add("slot_won_twice", f"{trid}: {show(winners[trid])} and {show(decided)}")
            winners[trid] = decided
