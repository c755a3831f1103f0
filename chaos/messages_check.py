"""What every user's sockets received against what the event store says they were sent
(sections 7 and 8): every message received or `resync_required` sent, none twice, each
broadcast's messages in the order of its events, and no eventId twice on one socket.

A user's sockets follow one another, each reconnect asking `?lastEventId=` the last one seen,
so together they owe the user every message of an event recorded after the first socket was
connected. A reset point ends what is owed before it: a `resync_required` frame, or a socket
opened without `lastEventId` (there is nothing to replay from). Events recorded in the last
`END_MARGIN_S` before the sockets closed are not owed (still on their way).
"""

from __future__ import annotations

import bisect
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from chaos.expected import Expected, Ident, frame_ident
from chaos.records import FrameRecord, RunLog
from chaos.verdicts import Verdicts

END_MARGIN_S = 8.0
REDIS_LOSS = ("redis_wipe", "redis_tail_loss")
REPUBLISH_WINDOW_S = 90.0  # the relay republishes up to a minute back, then it is projected
RESET_SLACK_S = 0.2


@dataclass
class UserView:
    """One user's received frames and reset points, in receive order."""

    start: float
    end: float
    frames: list[FrameRecord] = field(default_factory=list)
    resets: list[float] = field(default_factory=list)

    def excused(self, at: float) -> bool:
        """A reset point came after the event: the user may have missed it."""
        return bool(self.resets) and self.resets[-1] >= at - RESET_SLACK_S

    def segment(self, at: float) -> int:
        """How many reset points came before `at`."""
        return bisect.bisect_right(self.resets, at)


def user_views(log: RunLog, closed_at: float) -> dict[str, UserView]:
    views: dict[str, UserView] = {}
    for span in sorted(log.sockets, key=lambda s: s.opened):
        if span.connected is None:
            continue
        view = views.get(span.user)
        if view is None:
            views[span.user] = UserView(span.connected, closed_at - END_MARGIN_S)
        elif span.last_event_id is None:
            view.resets.append(span.connected)
    for record in log.frames:
        view = views[record.user]
        if record.frame.get("type") == "resync_required":
            view.resets.append(record.at)
        view.frames.append(record)
    for view in views.values():
        view.resets.sort()
    return views


def check_messages(
    out: Verdicts, log: RunLog, expected: Sequence[Expected], closed_at: float
) -> None:
    context = FaultContext(log)
    owed: dict[str, list[Expected]] = defaultdict(list)
    for m in expected:
        owed[m.user].append(m)
    _event_ids_once(out, log)
    for user, view in user_views(log, closed_at).items():
        UserCheck(out, user, view, context).run(owed.get(user, []))
    out.stats["frames received"] = str(len(log.frames))
    out.stats["resync_required received"] = str(
        sum(1 for f in log.frames if f.frame.get("type") == "resync_required")
    )


@dataclass
class UserCheck:
    """One user's frames against the messages owed to that user."""

    out: Verdicts
    user: str
    view: UserView
    context: FaultContext

    def run(self, mine: Sequence[Expected]) -> None:
        counts = Counter(m.ident for m in mine)
        got = self._received()
        self._missing(mine, got)
        self._doubled(got, counts)
        self._order({m.ident: m for m in reversed(mine)})
        for ident in sorted(set(got) - set(counts)):
            self.out.add("message_unexpected", f"{self.user} got {ident} at {got[ident][0]:.3f}")

    def _received(self) -> dict[Ident, list[float]]:
        got: dict[Ident, list[float]] = defaultdict(list)
        for record in self.view.frames:
            ident = frame_ident(record.frame)
            if ident is not None:
                got[ident].append(record.at)
        return got

    def _missing(self, mine: Sequence[Expected], got: Mapping[Ident, list[float]]) -> None:
        view = self.view
        owed = Counter(
            m.ident for m in mine if view.start < m.at <= view.end and not view.excused(m.at)
        )
        for ident, count in owed.items():
            if len(got.get(ident, [])) < count:
                at = min(m.at for m in mine if m.ident == ident)
                self.out.add(
                    "message_missing",
                    f"{self.user} never got {ident} (event at {at:.3f}{self.context(at)})",
                )

    def _doubled(self, got: Mapping[Ident, list[float]], counts: Counter[Ident]) -> None:
        """More receptions than sendings. No reconnect legitimately repeats a message (a replay
        starts after the last id seen, a resync goes on with live frames only), so this holds
        across reset points too; repeats within the relay's republish window after Redis lost
        data are told apart."""
        for ident, times in got.items():
            if ident in counts and len(times) > counts[ident]:
                shown = ", ".join(f"{t:.3f}" for t in times)
                lost = self.context.redis_lost_before(times[-1])
                self.out.add(
                    "message_doubled_after_redis_loss" if lost else "message_doubled",
                    f"{self.user} got {ident} {len(times)} times"
                    f" ({shown}{self.context(times[-1])})",
                )

    def _order(self, first: Mapping[Ident, Expected]) -> None:
        """Within a segment between reset points, each broadcast's messages arrive in its
        events' version order. Only first receptions count: a repeat is `_doubled`'s."""
        newest: dict[tuple[int, str], Expected] = {}
        seen: set[Ident] = set()
        for record in self.view.frames:
            ident = frame_ident(record.frame)
            m = first.get(ident) if ident is not None else None
            if m is None or m.broadcast is None or m.ident in seen:
                continue
            seen.add(m.ident)
            self._content(m, record)
            segment = self.view.segment(record.at)
            before = newest.get((segment, m.broadcast))
            if before is not None and m.version < before.version:
                self.out.add(
                    "message_out_of_order",
                    f"{self.user} got {m.ident} (v{m.version}) at {record.at:.3f}"
                    f" after {before.ident} (v{before.version}){self.context(record.at)}",
                )
            if before is None or m.version > before.version:
                newest[(segment, m.broadcast)] = m

    def _content(self, m: Expected, record: FrameRecord) -> None:
        data = record.frame.get("data") or {}
        wrong = [(k, v, data.get(k)) for k, v in m.data if data.get(k) != v]
        if wrong:
            shown = ", ".join(f"{k}={got!r} (expected {want!r})" for k, want, got in wrong)
            self.out.add("message_content_wrong", f"{self.user} got {m.ident}: {shown}")


def _event_ids_once(out: Verdicts, log: RunLog) -> None:
    seen: set[tuple[int, str]] = set()
    for record in log.frames:
        event_id = record.frame.get("eventId")
        if not isinstance(event_id, str):
            continue
        if (record.socket, event_id) in seen:
            out.add("event_id_twice", f"socket {record.socket} of {record.user}: {event_id}")
        seen.add((record.socket, event_id))


class FaultContext:
    """The faults that began in the `WINDOW_S` before a moment, as an example's context."""

    WINDOW_S = 30.0

    def __init__(self, log: RunLog) -> None:
        self.start = log.marks.get("load_start", 0.0)
        self.faults = sorted(log.faults, key=lambda f: f.start)

    def redis_lost_before(self, at: float) -> bool:
        """Redis lost data (wiped, or rolled back) within the relay's republish window before
        `at`: repeats of what was republished are told apart from repeats of other causes."""
        return any(
            f.kind in REDIS_LOSS and at - REPUBLISH_WINDOW_S <= f.start <= at for f in self.faults
        )

    def __call__(self, at: float) -> str:
        near = [
            f"{f.kind} {f.target} at +{f.start - self.start:.1f}s"
            for f in self.faults
            if at - self.WINDOW_S <= f.start <= at
        ]
        return f"; {at - self.start:+.1f}s into the run, after {', '.join(near)}" if near else ""
