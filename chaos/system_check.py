"""The system's own promises (section 8): every committed event on its stream, nothing stuck in
the outbox, single-holder roles moving within 10 s of their holder's kill or freeze, Redis
memory back near idle once the history window has passed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from chaos.records import FaultRecord, LeaseSample, RunLog
from chaos.store import Store
from chaos.verdicts import Verdicts

STREAM_WINDOW_S = 45.0  # younger than the trim's one minute: still on the stream if published
OUTBOX_STUCK_S = 10.0
ROLE_MOVE_S = 10.0


def check_streams(out: Verdicts, store: Store) -> None:
    """Every event of the last `STREAM_WINDOW_S` below the outbox's lowest position (the relay
    is done with it) is on `<prefix>{bus}:events:<category>`."""
    horizon = store.read_at - STREAM_WINDOW_S
    lowest = store.outbox.lowest
    checked = 0
    for e in store.events:
        if e.at < horizon or (lowest is not None and e.position >= lowest):
            continue
        checked += 1
        if e.event_id not in store.on_streams.get(e.category, set()):
            out.add(
                "event_not_on_stream",
                f"{e.type} {e.event_id} (position {e.position}, {e.stream_id} v{e.version},"
                f" recorded {e.at:.3f})",
            )
    out.stats["events checked on streams"] = f"{checked} of the last {STREAM_WINDOW_S:g}s"
    oldest = store.outbox.oldest_at
    out.stats["outbox at check"] = f"{store.outbox.rows} rows"
    if oldest is not None and oldest < store.read_at - OUTBOX_STUCK_S:
        out.add(
            "outbox_stuck",
            f"{store.outbox.rows} rows; the oldest recorded {store.read_at - oldest:.1f}s"
            " before the check",
        )


@dataclass(frozen=True)
class RoleMove:
    role: str
    fault: str
    holder: str
    moved_after: float | None  # seconds from the fault to the next holder's acquisition


def role_moves(log: RunLog) -> list[RoleMove]:
    """For each kill or freeze of a process that held a role then: how long until another
    holder (a larger token) had it."""
    moves = []
    for fault in log.faults:
        if fault.kind not in ("kill", "freeze") or not fault.target:
            continue
        pid = _pid(fault)
        for role, sample in _held_at(log.leases, fault.start).items():
            if pid is None or f"-{pid}-" not in sample.holder:
                continue
            after = [
                s for s in log.leases
                if s.role == role and s.token > sample.token and s.at >= fault.start
            ]  # fmt: skip
            moved = after[0].acquired_at - fault.start if after else None
            when = fault.start - log.marks.get("load_start", 0.0)
            what = f"{fault.kind} {fault.target} at +{when:.1f}s"
            moves.append(RoleMove(role, what, sample.holder, moved))
    return moves


def _pid(fault: FaultRecord) -> int | None:
    head = fault.detail.split(",")[0]
    return int(head.split()[1]) if head.startswith("pid ") else None


def _held_at(samples: Sequence[LeaseSample], at: float) -> dict[str, LeaseSample]:
    held: dict[str, LeaseSample] = {}
    for s in samples:
        if s.at <= at:
            held[s.role] = s
    return held


def check_roles(out: Verdicts, moves: Sequence[RoleMove]) -> None:
    for m in moves:
        if m.moved_after is None or m.moved_after > ROLE_MOVE_S:
            taken = "never" if m.moved_after is None else f"after {m.moved_after:.1f}s"
            out.add("role_move_slow", f"{m.role} held by {m.holder}: {m.fault}, moved {taken}")
