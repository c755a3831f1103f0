"""The run's report as markdown (printed, and written into docs/reliability.md's "Latest run"
section or any file): faults by kind, operations by kind with their statuses, violations by kind
with up to five examples each, role moves, figures, the seed and the command that reruns it."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

from chaos.config import SoakConfig
from chaos.records import RunLog
from chaos.system_check import RoleMove
from chaos.verdicts import KINDS, Verdicts

EXAMPLES = 5
LATEST = "## Latest run"
FULL_RUN_S = 600.0


def render(config: SoakConfig, log: RunLog, verdicts: Verdicts, moves: Sequence[RoleMove]) -> str:
    started = log.marks.get("load_start", 0.0)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started))
    lines = [
        f"Run of {when}: **{config.seconds:g} s** of load, seed **{config.seed}**, a fault every"
        f" ~{config.fault_interval_s:g} s. Reproduce: `{config.command()}`.",
        "",
        *_duration_note(config),
        f"**{verdicts.total} violations** of {len(verdicts.found)} kinds"
        f" ({len(log.faults)} faults, {len(log.attempts)} requests, {len(log.frames)} frames).",
        "",
    ]
    lines += _faults(log, started)
    lines += _operations(log)
    lines += _violations(verdicts)
    lines += _moves(moves)
    lines += _exits(log, started)
    lines += ["### Figures", "", *(f"- {k}: {v}" for k, v in verdicts.stats.items()), ""]
    return "\n".join(lines)


def _duration_note(config: SoakConfig) -> list[str]:
    if config.seconds == FULL_RUN_S:
        return []
    minutes = (
        f"{config.seconds / 60:g}-minute" if config.seconds >= 60 else f"{config.seconds:g}-second"
    )
    return [f"_A {minutes} run, not the 10 minutes of `make chaos`._", ""]


def _faults(log: RunLog, started: float) -> list[str]:
    counts = Counter(f.kind for f in log.faults)
    failed = Counter(f.kind for f in log.faults if not f.ok)
    out = ["### Faults injected", "", "| kind | injected | failed to inject |", "|---|---:|---:|"]
    out += [f"| {k} | {n} | {failed[k]} |" for k, n in sorted(counts.items())]
    out += [
        "",
        "<details><summary>Timeline</summary>",
        "",
        "| at (s) | kind | target | lasted (s) | detail |",
    ]
    out += ["|---:|---|---|---:|---|"]
    for f in log.faults:
        lasted = f"{f.end - f.start:.1f}" if f.end is not None else "-"
        out.append(f"| {f.start - started:.1f} | {f.kind} | {f.target} | {lasted} | {f.detail} |")
    return [*out, "", "</details>", ""]


def _operations(log: RunLog) -> list[str]:
    statuses: dict[str, Counter[str]] = defaultdict(Counter)
    for a in log.attempts:
        statuses[a.kind][str(a.status) if a.status is not None else "no answer"] += 1
    out = ["### Operations", "", "| kind | attempts | statuses |", "|---|---:|---|"]
    for kind, counts in sorted(statuses.items()):
        shown = ", ".join(f"{s}: {n}" for s, n in sorted(counts.items()))
        out.append(f"| {kind} | {sum(counts.values())} | {shown} |")
    return [*out, ""]


def _violations(verdicts: Verdicts) -> list[str]:
    out = ["### Violations", "", "| kind | count | what it means |", "|---|---:|---|"]
    out += [
        f"| {k} | {len(verdicts.found.get(k, []))} | {meaning} |" for k, meaning in KINDS.items()
    ]
    out.append("")
    for kind, examples in verdicts.found.items():
        out += [f"#### {kind} ({len(examples)})", ""]
        out += [f"- `{e}`" for e in examples[:EXAMPLES]]
        out.append("")
    return out


def _moves(moves: Sequence[RoleMove]) -> list[str]:
    out = ["### Single-holder roles after a kill or freeze of their holder", ""]
    if not moves:
        return [*out, "No fault hit a process holding a role in `leases`.", ""]
    out += ["| role | fault | holder | moved after (s) |", "|---|---|---|---:|"]
    for m in moves:
        after = f"{m.moved_after:.1f}" if m.moved_after is not None else "never"
        out.append(f"| {m.role} | {m.fault} | {m.holder} | {after} |")
    return [*out, ""]


def _exits(log: RunLog, started: float) -> list[str]:
    out = [
        "### Processes that exited by themselves (restarted 2 s later, as an orchestrator would)"
    ]
    if not log.exits:
        return [*out, "", "None.", ""]
    out += [
        "",
        "| at (s) | slot | pid | exit code | last error logged |",
        "|---:|---|---:|---:|---|",
    ]
    for e in log.exits:
        error = e.last_error.replace("|", "\\|")
        out.append(f"| {e.at - started:.1f} | {e.slot} | {e.pid} | {e.code} | `{error}` |")
    return [*out, ""]


def write_report(path: Path, body: str) -> None:
    """Replace the `## Latest run` section of `path` (kept from the top), or write `body` alone
    if the file has no such section."""
    if path.exists() and LATEST in (text := path.read_text()):
        head = text[: text.index(LATEST)]
        path.write_text(f"{head}{LATEST}\n\n{body}\n")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body + "\n")
