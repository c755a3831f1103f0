"""`python -m bench [SCENARIO ...]`: run benchmark scenarios, update docs/benchmarks.md.

With no scenario named it runs every one except those in `ON_DEMAND`: the soak takes over ten
minutes, so it runs only when named (`make bench SCENARIOS=soak`).
"""

from __future__ import annotations

import argparse
import importlib

from bench.common import write_report

SCENARIOS = {
    "bus": "bench.bus",
    "timers": "bench.timers",
    "accept-storm": "bench.accept_storm",
    "search": "bench.search",
    "fanout": "bench.fanout",
    "projector": "bench.projector",
    "presence": "bench.presence",
    "soak": "bench.soak",
}
ON_DEMAND = frozenset({"soak"})  # left out of a run that names no scenario


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("scenarios", nargs="*", choices=[*SCENARIOS, []], default=[])
    names = parser.parse_args().scenarios or [n for n in SCENARIOS if n not in ON_DEMAND]
    for name in names:
        print(f"== {name}", flush=True)
        figures = importlib.import_module(SCENARIOS[name]).run()
        write_report(figures)
        print(figures.markdown(), flush=True)


if __name__ == "__main__":
    main()
