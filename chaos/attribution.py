"""Holding one logical request (its chain of attempts) against the changes PostgreSQL recorded
for it (section 2: a 2xx's change is made, a 503's never is, a keyed retry answers the outcome
of the attempt that took effect).

An effect is an event with its time (`recorded_at`, PostgreSQL's clock on this host) and what an
answer would name (a broadcast id, a truck request id, a driver and vehicle). It belongs to the
chain whose 2xx names it, else to the latest chain of the same subject sent before it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from chaos.api import error_code, needs_retry, outcome
from chaos.records import Attempt
from chaos.verdicts import Verdicts, show

Chain = Sequence[Attempt]
Names = Callable[[Attempt], set[str]]


@dataclass(frozen=True)
class Effect:
    at: float
    ident: str
    what: str


def named(chain: Chain, names: Names) -> set[str]:
    decided = outcome(chain)
    if decided is None or decided.status is None or not 200 <= decided.status < 300:
        return set()
    return names(decided)


def assign_effects(
    chains: Sequence[Chain], effects: Sequence[Effect], names: Names
) -> tuple[dict[int, list[Effect]], list[Effect]]:
    """Each effect to its chain (by chain id): the first whose 2xx names it, else the latest
    sent before it with an attempt that got no answer (it may have made it), else the latest
    sent before it; and the effects that no chain can own."""
    claims = [(chain, named(chain, names)) for chain in chains]
    owned: dict[int, list[Effect]] = {chain[0].chain: [] for chain in chains}
    orphans = []
    for effect in effects:
        claiming = [chain for chain, idents in claims if effect.ident in idents]
        earlier = [chain for chain in chains if chain[0].sent <= effect.at]
        lost = [c for c in earlier if any(a.status is None and a.sent <= effect.at for a in c)]
        candidates = claiming[:1] or lost[-1:] or earlier[-1:]
        if candidates:
            owned[candidates[0][0].chain].append(effect)
        else:
            orphans.append(effect)
    return owned, orphans


def judge(
    out: Verdicts, chain: Chain, effects: Sequence[Effect], names: Names, exists: set[str]
) -> None:
    """One chain against its effects; `exists` is every ident the subject's effects hold."""
    decided = outcome(chain)
    claimed = named(chain, names)
    for ident in sorted(claimed - exists):
        out.add("success_without_effect", f"{show(decided or chain[0])}: no change for {ident}")
    for effect in effects:
        _judge_effect(out, chain, effect, claimed)


def _judge_effect(out: Verdicts, chain: Chain, effect: Effect, claimed: set[str]) -> None:
    executing = [a for a in chain if a.sent <= effect.at and not _in_flight(a)]
    line = f"{effect.what} at {effect.at:.3f}"
    if not executing:
        out.add("effect_without_request", f"{line}; first attempt {show(chain[0])}")
        return
    if all(_server_error(a) for a in executing):
        out.add("unavailable_with_effect", f"{show(executing[-1])}; yet {line}")
        return
    if effect.ident in claimed:
        return
    if any(a.status is None for a in executing):
        decided = outcome(chain)
        if decided is not None and chain[0].key is not None:
            out.add("retry_new_decision", f"{show(decided)} after a lost attempt made {line}")
        return
    if any(_server_error(a) for a in executing):
        out.add("unavailable_with_effect", f"{show(executing[-1])}; yet {line}")
        return
    decided = outcome(chain)
    kind = (
        "refusal_with_effect"
        if decided and (decided.status or 0) >= 400
        else "effect_without_request"
    )
    out.add(kind, f"{show(decided or chain[-1])}; yet {line}")


def _server_error(a: Attempt) -> bool:
    return a.status is not None and a.status >= 500


def _in_flight(a: Attempt) -> bool:
    return a.status == 409 and error_code(a) == "request_in_flight"


def judge_orphans(out: Verdicts, orphans: Sequence[Effect], subject: str) -> None:
    for effect in orphans:
        out.add(
            "effect_without_request",
            f"{effect.what} at {effect.at:.3f}: {subject} sent nothing before",
        )


def check_replays(out: Verdicts, chain: Chain) -> None:
    """Every answer of a key after its first outcome repeats that outcome."""
    answers = [a for a in chain if not needs_retry(a)]
    if chain[0].key is None or len(answers) < 2:
        return
    first = answers[0]
    for later in answers[1:]:
        same_status = later.status == first.status or (first.status == 201 and later.status == 200)
        if not same_status or later.response != first.response or not later.replayed:
            out.add(
                "retry_answer_differs",
                f"{show(later)} (replayed={later.replayed}) vs first {show(first)}",
            )
