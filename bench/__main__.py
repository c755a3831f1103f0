"""`python -m bench [SCENARIO ...]`: run benchmark scenarios, update docs/benchmarks.md."""

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
    "presence": "bench.presence",
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("scenarios", nargs="*", choices=[*SCENARIOS, []], default=[])
    names = parser.parse_args().scenarios or list(SCENARIOS)
    for name in names:
        print(f"== {name}", flush=True)
        figures = importlib.import_module(SCENARIOS[name]).run()
        write_report(figures)
        print(figures.markdown(), flush=True)


if __name__ == "__main__":
    main()
