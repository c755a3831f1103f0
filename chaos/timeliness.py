"""Expiry on time (section 8): a broadcast still active at `expiresAt` ends within 1 s of it, or
within 1 s of the first timer being back when the faults had taken every timer down. A window
in which a dependency itself was down (a booking table locked, Redis stopped) does not count
either: we read the contract's 1 s as 1 s of a running timer with its dependencies up, and say
so in docs/reliability.md. A timer that exited by itself was not taken down by a fault: its
downtime counts against the 1 s.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Iterable, Sequence

from chaos.fold import ACTIVE, Folded
from chaos.records import RunLog
from chaos.store import Store
from chaos.verdicts import Verdicts

Interval = tuple[float, float]
LATE_AFTER_S = 1.0
DEPENDENCY_FAULTS = ("pg_lock", "redis_restart", "redis_tail_loss")


def union(intervals: Iterable[Interval]) -> list[Interval]:
    merged: list[Interval] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def intersect(a: Sequence[Interval], b: Sequence[Interval]) -> list[Interval]:
    out = []
    for s1, e1 in a:
        for s2, e2 in b:
            if max(s1, s2) < min(e1, e2):
                out.append((max(s1, s2), min(e1, e2)))
    return union(out)


def covered(span: Interval, intervals: Sequence[Interval]) -> float:
    return sum(max(0.0, min(span[1], e) - max(span[0], s)) for s, e in intervals)


def slot_down(log: RunLog, slot: str, until: float) -> list[Interval]:
    """When a fault left the slot with no process answering: from a kill to the next process's
    /health, and every freeze. A process that exited by itself does not count: the contract's
    "every timer was down" is about timers taken away (killed, redeployed), not crashing."""
    spans = sorted((p for p in log.processes if p.slot == slot), key=lambda p: p.started)
    crashed = {e.pid for e in log.exits}  # the system's own doing, not a fault's
    down = [
        (p.ended, nxt.healthy or until)
        for p, nxt in itertools.pairwise(spans)
        if p.ended is not None and p.pid not in crashed
    ]
    frozen = [
        (f.start, f.end or until) for f in log.faults if f.kind == "freeze" and f.target == slot
    ]
    return union(down + frozen)


def outages(log: RunLog, until: float) -> list[Interval]:
    """Every timer down at once, or a dependency down."""
    timers = sorted({p.slot for p in log.processes if p.service == "timer"})
    all_down: list[Interval] = [(0.0, until)]
    for slot in timers:
        all_down = intersect(all_down, slot_down(log, slot, until))
    dependency = [
        (f.down_from or f.start, f.end or until)
        for f in log.faults
        if f.kind in DEPENDENCY_FAULTS and f.ok
    ]
    return union(all_down + dependency)


def check_expiries(out: Verdicts, store: Store, folded: Folded, log: RunLog) -> None:
    excused = outages(log, store.read_at)
    lateness = []
    for b in folded.broadcasts.values():
        ended = [s for s in b.steps if s.before in ACTIVE and s.after not in ACTIVE]
        if not ended:
            if b.state in ACTIVE and b.expires_at < store.read_at - 5:
                out.add("expiry_missing", f"{b.id} still {b.state}, expiresAt {b.expires_at:.3f}")
            continue
        e = ended[0].event
        if e.type == "broadcast_expired" and e.data.get("endReason") == "no_transporters":
            continue
        late = e.at - b.expires_at
        effective = late - covered((b.expires_at, e.at), excused)
        if e.type == "broadcast_expired":
            lateness.append(late)
        if effective > LATE_AFTER_S:
            out.add(
                "expiry_late",
                f"{b.id} ended ({e.type}) {late:.3f}s after expiresAt {b.expires_at:.3f}"
                f" ({effective:.3f}s not excused by outages; position {e.position})",
            )
    if lateness:
        lateness.sort()
        out.stats["expiries"] = (
            f"{len(lateness)}; lateness p50 {statistics.median(lateness):.3f}s,"
            f" p99 {lateness[int(0.99 * (len(lateness) - 1))]:.3f}s, max {lateness[-1]:.3f}s"
        )
    out.stats["outages excused for expiry"] = (
        f"{len(excused)} windows, {covered((0, store.read_at), excused):.1f}s"
    )
