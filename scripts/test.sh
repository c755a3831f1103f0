#!/usr/bin/env bash
# `make test`: `make lint` and the suite side by side, then both verdicts. The linters use about
# one core (mypy, cfn-lint, checkov) while the suite often waits (a TTL, a process starting), so
# together they take less time than one after the other. The lint output is printed once the
# suite ends; the exit code is non-zero if either failed. Arguments go to pytest.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
VENV="${VENV:-.venv}"
started=$SECONDS
lint_log="$(mktemp)"
trap 'rm -f "$lint_log"' EXIT

make --no-print-directory lint VENV="$VENV" >"$lint_log" 2>&1 &
lint_pid=$!
"$VENV/bin/pytest" -n 4 --dist loadscope --no-loadscope-reorder "$@"
tests=$?
wait "$lint_pid"
linted=$?

echo "== make lint (run beside the suite)"
cat "$lint_log"
verdict() { if [ "$1" -eq 0 ]; then echo passed; else echo "FAILED ($1)"; fi; }
echo "make test: lint $(verdict "$linted"), suite $(verdict "$tests"), $((SECONDS - started)) s in all"
[ "$linted" -eq 0 ] && [ "$tests" -eq 0 ]
