"""Driver availability against the event store (section 6): a 200 `PUT availability` left
the driver in the state asked for, a 5xx changed nothing. Unkeyed, and each driver's requests
go one after another, so the requests between two of them are that one alone."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from chaos.fold import Folded
from chaos.records import Attempt
from chaos.store import Event
from chaos.verdicts import Verdicts, show


def check_availability(out: Verdicts, attempts: Sequence[Attempt], folded: Folded) -> None:
    """A 200 `PUT availability` left the driver in the state asked for (a change is an event in
    the request's time, a repeat found it so); a 5xx made no `requested` change."""
    puts: dict[str, list[Attempt]] = defaultdict(list)
    for a in attempts:
        if a.kind == "availability":
            puts[a.actor.split(":", 1)[1]].append(a)
    for driver, sent in puts.items():
        changes = folded.availability.get(driver, [])
        for i, a in enumerate(sent):
            wanted = bool(a.body["online"])
            if a.status == 200:
                _availability_made(out, a, wanted, changes)
            elif a.status is not None and a.status >= 500:
                until = sent[i + 1].sent if i + 1 < len(sent) else float("inf")
                lost = [p for p in sent[:i] if p.status is None and p.body == a.body]
                made = [
                    e for e in changes
                    if a.sent <= e.at < until and e.data["online"] == wanted
                    and e.data.get("reason") == "requested"
                ]  # fmt: skip
                if made and not lost:
                    what = f"position {made[0].position} at {made[0].at:.3f}"
                    out.add("unavailable_with_effect", f"{show(a)}; yet {driver} changed ({what})")


def _availability_made(out: Verdicts, a: Attempt, wanted: bool, changes: Sequence[Event]) -> None:
    assert a.answered is not None
    window = [e for e in changes if a.sent <= e.at <= a.answered and e.data["online"] == wanted]
    before = [e for e in changes if e.at < a.sent]
    state = bool(before[-1].data["online"]) if before else False
    if not window and state != wanted:
        out.add("success_without_effect", f"{show(a)}: {a.actor} was left online={state}")
