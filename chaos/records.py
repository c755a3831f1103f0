"""What a soak run records: every request attempt, socket, frame, fault and sample, each with
wall-clock times (`time.time()`, the same clock PostgreSQL reads on this host)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec


class Attempt(msgspec.Struct, frozen=True, kw_only=True):
    """One HTTP request and its answer; `status` None means no answer (connection error or
    timeout). Attempts of one logical request (keyed retries, double taps) share `chain`."""

    id: int
    chain: int
    actor: str
    kind: str
    method: str
    path: str
    gateway: int
    key: str | None
    body: Any
    sent: float
    answered: float | None
    status: int | None
    response: Any = None
    replayed: bool = False
    error: str | None = None


class SocketSpan(msgspec.Struct, kw_only=True):
    """One WebSocket connection of a user, from the connect call to the close."""

    id: int
    user: str
    gateway: int
    opened: float
    last_event_id: str | None
    connected: float | None = None
    closed: float | None = None
    close_code: int | None = None
    error: str | None = None


class FrameRecord(msgspec.Struct, frozen=True):
    socket: int
    user: str
    at: float
    frame: dict[str, Any]


class FaultRecord(msgspec.Struct, kw_only=True):
    id: int
    kind: str
    target: str
    start: float
    end: float | None = None
    ok: bool = True
    detail: str = ""
    down_from: float | None = None  # when the resource itself went down, if not at `start`


class ProcessSpan(msgspec.Struct, kw_only=True):
    """One process of a cluster slot: when it was spawned, answered /health, and ended."""

    slot: str
    service: str
    pid: int
    started: float
    healthy: float | None = None
    ended: float | None = None


class ProcessExit(msgspec.Struct, frozen=True, kw_only=True):
    """A process that exited by itself (not killed by a fault); the harness restarted it."""

    slot: str
    pid: int
    at: float
    code: int
    last_error: str


class LeaseSample(msgspec.Struct, frozen=True):
    at: float
    role: str
    holder: str
    token: int
    acquired_at: float


class MemorySample(msgspec.Struct, frozen=True):
    at: float
    used_memory: int


STORE = "store.json"  # the store as the checker read it, beside the log
FACTS = "run.json"


class RunFacts(msgspec.Struct, frozen=True, kw_only=True):
    """What a recheck needs besides the log and the store."""

    seconds: float
    seed: int
    fault_interval_s: float
    fault_kinds: tuple[str, ...]
    closed_at: float  # when the sockets were closed
    transporter_of: dict[str, str]  # driver: its transporter
    idle_memory: int = 0
    end_memory: tuple[int, int, dict[str, int]] = (0, 0, {})  # used, allowed, by key part


@dataclass
class RunLog:
    """Everything one run recorded, in memory; `dump` writes it as JSONL files."""

    attempts: list[Attempt] = field(default_factory=list)
    sockets: list[SocketSpan] = field(default_factory=list)
    frames: list[FrameRecord] = field(default_factory=list)
    faults: list[FaultRecord] = field(default_factory=list)
    processes: list[ProcessSpan] = field(default_factory=list)
    exits: list[ProcessExit] = field(default_factory=list)
    leases: list[LeaseSample] = field(default_factory=list)
    memory: list[MemorySample] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def next_id(self) -> int:
        return next(self._ids)

    def tables(self) -> dict[str, tuple[type[Any], list[Any]]]:
        return {
            "attempts": (Attempt, self.attempts),
            "sockets": (SocketSpan, self.sockets),
            "frames": (FrameRecord, self.frames),
            "faults": (FaultRecord, self.faults),
            "processes": (ProcessSpan, self.processes),
            "exits": (ProcessExit, self.exits),
            "leases": (LeaseSample, self.leases),
            "memory": (MemorySample, self.memory),
        }

    def dump(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        encoder = msgspec.json.Encoder()
        for name, (_, rows) in self.tables().items():
            with open(directory / f"{name}.jsonl", "wb") as out:
                for row in rows:
                    out.write(encoder.encode(row) + b"\n")
        (directory / "marks.json").write_bytes(encoder.encode(self.marks))

    @classmethod
    def load(cls, directory: Path) -> RunLog:
        """A log `dump` wrote, for checking a finished run again (`python -m chaos --recheck`)."""
        log = cls()
        for name, (kind, rows) in log.tables().items():
            decoder = msgspec.json.Decoder(kind)
            with open(directory / f"{name}.jsonl", "rb") as lines:
                rows.extend(decoder.decode(line) for line in lines if line.strip())
        log.marks.update(msgspec.json.decode((directory / "marks.json").read_bytes()))
        return log
