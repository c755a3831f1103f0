"""deploy/ecs/stack-outputs.sh: the stack's outputs become the NAME=value lines deploy.sh and
render_task_definition.py read. Its Python part is run here as the script runs it, on the
outputs a stack made from deploy/ecs/stack.yaml has (`aws cloudformation describe-stacks`
replaced by that list), so a renamed or dropped output, or a placeholder no output fills, fails."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

import pytest

from tests.deploy.conftest import ROOT
from tests.deploy.stack_template import load_template

SCRIPT = ROOT / "deploy" / "ecs" / "stack-outputs.sh"
ROLE_NAMES = [
    f"{name}_TASK_ROLE_ARN"
    for name in (
        "GATEWAY",
        "BROADCAST",
        "ACCEPTANCE",
        "TIMER",
        "PRESENCE",
        "FANOUT",
        "MIGRATE",
        "OPS",
    )
]


def script_python() -> str:
    """The program the script pipes describe-stacks into (`python3 -c '...'`)."""
    text = SCRIPT.read_text()
    match = re.search(r"python3 -c '\n(.*?)\n'", text, re.DOTALL)
    assert match, "stack-outputs.sh no longer has its python3 -c '...' part"
    return match.group(1)


def run_with(outputs: list[dict[str, str]]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script_python()],
        input=json.dumps(outputs),
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )


@pytest.fixture(scope="module")
def stack_outputs() -> list[dict[str, str]]:
    """Every output of the stack, with a stand-in value naming it."""
    template: dict[str, Any] = load_template()
    return [{"OutputKey": k, "OutputValue": f"value-of-{k}"} for k in template["Outputs"]]


@pytest.mark.process
def test_every_name_comes_from_an_output_of_the_stack(
    stack_outputs: list[dict[str, str]],
) -> None:
    """Run on the stack's outputs, the script prints one line per role, the JWT and app secrets,
    the execution role and the rest, each from the output of that name; no TASK_ROLE_ARN."""
    result = run_with(stack_outputs)
    assert result.returncode == 0, result.stderr
    printed = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert printed["GATEWAY_TASK_ROLE_ARN"] == "value-of-GatewayTaskRoleArn"
    assert printed["OPS_TASK_ROLE_ARN"] == "value-of-OpsTaskRoleArn"
    assert printed["JWT_SECRET_ARN"] == "value-of-JwtSecretArn"
    assert printed["SECRET_ARN"] == "value-of-AppSecretArn"
    assert printed["EXECUTION_ROLE_ARN"] == "value-of-TaskExecutionRoleArn"
    assert set(ROLE_NAMES) <= set(printed)
    assert "TASK_ROLE_ARN" not in printed


@pytest.mark.process
def test_a_missing_output_is_named(stack_outputs: list[dict[str, str]]) -> None:
    """Without one of the outputs it needs, the script exits non-zero naming it."""
    without = [o for o in stack_outputs if o["OutputKey"] != "JwtSecretArn"]
    result = run_with(without)
    assert result.returncode != 0
    assert "JwtSecretArn" in result.stderr


@pytest.mark.process
def test_every_role_and_secret_placeholder_is_printed(stack_outputs: list[dict[str, str]]) -> None:
    """Each role, secret and log group placeholder of every task definition is a name the
    script prints (the others have defaults or come from the deploy: IMAGE, AWS_REGION, ...)."""
    printed = {line.split("=", 1)[0] for line in run_with(stack_outputs).stdout.splitlines()}
    used = set()
    for path in (ROOT / "deploy/ecs/task-definitions").glob("*.json"):
        used |= set(re.findall(r"\$\{([A-Z0-9_]+)\}", path.read_text()))
    from_stack = {n for n in used if n.endswith(("_ARN", "LOG_GROUP"))}
    assert from_stack, used
    assert from_stack <= printed, from_stack - printed
