"""`python -m chaos`: the chaos soak. `make chaos` runs it for 10 minutes (CHAOS_SECONDS to
change) and writes the report into docs/reliability.md."""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
from pathlib import Path

from chaos.config import FAULT_KINDS, SoakConfig, server_url
from chaos.recheck import recheck
from chaos.report import write_report
from chaos.soak import run_soak


def parse(argv: list[str] | None = None) -> tuple[SoakConfig, Path | None, Path | None]:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__)
    parser.add_argument("--seconds", type=float, default=600.0, help="load time (default 600)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: a new one)")
    parser.add_argument("--fault-interval", type=float, default=5.0, help="seconds between faults")
    parser.add_argument(
        "--faults", default=",".join(FAULT_KINDS), help="fault kinds, comma-separated"
    )
    parser.add_argument("--settle", type=float, default=25.0, help="seconds of calm before checks")
    parser.add_argument("--run-dir", type=Path, default=Path(".weelo/chaos"), help="logs go here")
    parser.add_argument("--report", type=Path, default=None, help="write the markdown report here")
    parser.add_argument(
        "--recheck", type=Path, metavar="RUN_DIR", help="check a finished run again, run nothing"
    )
    args = parser.parse_args(argv)
    kinds = tuple(k for k in args.faults.split(",") if k)
    unknown = set(kinds) - set(FAULT_KINDS)
    if unknown:
        parser.error(f"unknown fault kinds: {', '.join(sorted(unknown))}")
    config = SoakConfig(
        seconds=args.seconds,
        seed=args.seed if args.seed is not None else random.randrange(1, 1_000_000),
        server_url=server_url(),
        run_dir=args.run_dir,
        fault_interval_s=args.fault_interval,
        fault_kinds=kinds,
        settle_s=args.settle,
    )
    return config, args.report, args.recheck


def main(argv: list[str] | None = None) -> int:
    config, report, again = parse(argv)
    random.seed(config.seed)
    result = recheck(again) if again is not None else asyncio.run(run_soak(config))
    print(result.report, flush=True)
    if report is not None:
        write_report(report, result.report)
    print(f"chaos: seed {config.seed}; logs in {result.run_dir}", file=sys.stderr)
    return 1 if result.verdicts.total else 0


if __name__ == "__main__":
    raise SystemExit(main())
