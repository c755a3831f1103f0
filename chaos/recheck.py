"""Checking a finished run again from what it kept (`python -m chaos --recheck RUN_DIR`): the
clients' logs, the store as the checker read it, and the run's own facts (Redis memory as it
was measured then)."""

from __future__ import annotations

from pathlib import Path

import msgspec

from chaos.checker import check
from chaos.config import SoakConfig
from chaos.memory import Memory, judge_memory
from chaos.records import FACTS, STORE, RunFacts, RunLog
from chaos.report import render
from chaos.soak import SoakResult
from chaos.store import load_store


def recheck(run_dir: Path) -> SoakResult:
    log = RunLog.load(run_dir / "log")
    store = load_store(run_dir / STORE)
    facts = msgspec.json.decode((run_dir / FACTS).read_bytes(), type=RunFacts)
    config = SoakConfig(
        seconds=facts.seconds,
        seed=facts.seed,
        fault_interval_s=facts.fault_interval_s,
        fault_kinds=facts.fault_kinds,
    )
    verdicts, moves = check(store, log, facts.transporter_of, facts.closed_at)
    peak = max((m.used_memory for m in log.memory), default=0)
    used, allowed, by_part = facts.end_memory
    judge_memory(
        verdicts, Memory(used, allowed, by_part), facts.idle_memory, peak, strict=config.long_run
    )
    return SoakResult(verdicts, moves, render(config, log, verdicts, moves), run_dir)
