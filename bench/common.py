"""What every benchmark scenario shares: throwaway databases, processes, statistics, the report."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from libs.local import probes
from libs.local.probes import free_port

__all__ = [
    "REPORT",
    "ROOT",
    "Figures",
    "Servers",
    "free_port",
    "healthy",
    "machine",
    "percentile",
    "processes",
    "scratch_database",
    "servers",
    "service_env",
    "wait_until",
    "weelo",
    "write_report",
]

ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "docs" / "benchmarks.md"


@dataclass(frozen=True)
class Servers:
    database_url: str
    redis_url: str


def servers() -> Servers:
    """PostgreSQL and Redis to measure against: BENCH_* or the usual variables, else localhost."""
    env = os.environ
    return Servers(
        env.get("BENCH_DATABASE_URL")
        or env.get("DATABASE_URL")
        or "postgresql://postgres@127.0.0.1:5432/postgres",
        env.get("BENCH_REDIS_URL") or env.get("REDIS_URL") or "redis://127.0.0.1:6379/0",
    )


def scratch_database(server_url: str) -> contextlib.AbstractContextManager[str]:
    """A fresh migrated database, dropped afterwards."""
    return probes.scratch_database(server_url, "weelo_bench")


def service_env(database_url: str, redis_url: str, prefix: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        REDIS_KEY_PREFIX=prefix,
        LOG_LEVEL="WARNING",
        **extra,
    )
    return env


@contextlib.contextmanager
def processes(
    commands: Sequence[Sequence[str]], env: dict[str, str]
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Start each command; on exit send SIGTERM and wait (kill after 30 s)."""
    procs = [subprocess.Popen(list(c), env=env, cwd=ROOT) for c in commands]
    try:
        yield procs
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def weelo(*args: str) -> list[str]:
    return [sys.executable, "-m", "libs.cli", *args]


def verdict(met: bool) -> str:
    return "met" if met else "**missed**"


def percentile(values: Sequence[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))
    return ordered[index]


@dataclass
class Figures:
    """One scenario's results: rows of (measure, value) and notes, plus how to reproduce."""

    scenario: str
    command: str
    rows: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def latency(self, label: str, seconds: Sequence[float]) -> None:
        ms = [s * 1000 for s in seconds]
        self.rows.append(
            (
                label,
                f"p50 {statistics.median(ms):.2f} ms · p99 {percentile(ms, 99):.2f} ms · "
                f"max {max(ms):.2f} ms (n={len(ms)})",
            )
        )

    def add(self, label: str, value: str) -> None:
        self.rows.append((label, value))

    def markdown(self) -> str:
        lines = [
            f"## {self.scenario}",
            "",
            f"Reproduce: `{self.command}`",
            "",
            f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}.",
            "",
            "| measure | result |",
            "|---|---|",
        ]
        lines += [f"| {k} | {v} |" for k, v in self.rows]
        if self.notes:
            lines += ["", *self.notes]
        return "\n".join(lines) + "\n"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}"


def report_path() -> Path:
    """docs/benchmarks.md, or `BENCH_REPORT` (a trial run's figures kept out of the docs)."""
    given = os.environ.get("BENCH_REPORT")
    return Path(given) if given else REPORT


def write_report(figures: Figures) -> None:
    """Replace this scenario's section of the report (`report_path`), keeping the others."""
    report = report_path()
    start, end = (
        f"<!-- bench:{figures.scenario}:start -->",
        f"<!-- bench:{figures.scenario}:end -->",
    )
    block = f"{start}\n{figures.markdown()}{end}\n"
    text = report.read_text() if report.exists() else _REPORT_HEADER
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end) + r"\n?", re.S)
    text = pattern.sub(lambda _m: block, text) if pattern.search(text) else text + "\n" + block
    report.write_text(text)


_REPORT_HEADER = """# Benchmarks

`make bench` runs every scenario; `make bench SCENARIOS="bus"` runs some. Each section below is
rewritten by its scenario with the figures of its last run and the command that reproduces it.
Every service and both servers share the one machine named in the section.
"""


def healthy(port: int) -> bool:
    return probes.healthy(f"http://127.0.0.1:{port}/health", timeout=1)


def wait_until(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.01)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds; 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
