#!/usr/bin/env bash
# Offline checks of everything that deploys Weelo (run by `make lint`, so by `make test`):
#   ECS task definitions  botocore's RegisterTaskDefinition model + our rules (no secret in
#                         `environment`, health checks, stopTimeout, logs)
#   CloudFormation stack  cfn-lint with the Weelo rules in deploy/cfn-rules (RDS, ECS, Redis,
#                         alarms and rollback, autoscaling, /metrics, OIDC, names, JWT secret),
#                         and checkov for breadth (deploy/checkov.yaml: skips, each with why)
#   workflows, compose    check-jsonschema with its vendored GitHub-workflow and compose schemas
#   Dockerfile            hadolint
#   workflows             zizmor --offline
#   deploy scripts        ruff on the Python, bash -n on the shell
# Every check runs; the exit code is non-zero if any of them found anything.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
BIN="${VENV:-.venv}/bin"
failed=()

check() {  # check NAME COMMAND...: run it, remember NAME if it fails
  local name="$1"
  shift
  if ! "$@"; then
    failed+=("$name")
  fi
}

check task-definitions "$BIN/python" scripts/check_task_definitions.py
check cfn-lint "$BIN/cfn-lint" --append-rules deploy/cfn-rules --template deploy/ecs/stack.yaml
check checkov "$BIN/checkov" --config-file deploy/checkov.yaml --file deploy/ecs/stack.yaml
check workflow-schema "$BIN/check-jsonschema" --builtin-schema vendor.github-workflows \
  .github/workflows/*.yml
check compose-schema "$BIN/check-jsonschema" --builtin-schema vendor.compose-spec compose.yaml
check hadolint "$BIN/hadolint" --failure-threshold style Dockerfile
check zizmor "$BIN/zizmor" --offline --quiet .github/workflows
check ruff "$BIN/ruff" check scripts deploy
check ruff-format "$BIN/ruff" format --check --quiet scripts deploy
for script in deploy/ecs/*.sh scripts/*.sh; do
  check "bash -n $script" bash -n "$script"
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "lint-deploy: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "lint-deploy: all deployment checks passed"
