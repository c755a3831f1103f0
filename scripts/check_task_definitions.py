#!/usr/bin/env python3
"""Check the ECS task definitions under deploy/ecs/task-definitions/, offline.

    .venv/bin/python scripts/check_task_definitions.py [FILE ...]

For each file: render its placeholders with sample values, validate the result against botocore's
model of ECS `RegisterTaskDefinition` (the same check the AWS CLI makes before sending), then
apply our own rules: no secret in `environment` (secrets come only from the `secrets` block, as
Secrets Manager ARNs), a health check on `/livez` on every long-running service (ECS replaces a
task that fails it: on `/health` a database or Redis failover would fail every task at once),
`stopTimeout` above the services' own shutdown timeout, awslogs logging. Prints one line per
finding; exit 1 if any.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TASK_DEFINITIONS = ROOT / "deploy" / "ecs" / "task-definitions"
SAMPLE_VALUES = {
    "IMAGE": "123456789012.dkr.ecr.us-east-1.amazonaws.com/weelo:0123456789abcdef",
    "SECRET_ARN": "arn:aws:secretsmanager:us-east-1:123456789012:secret:weelo/app-AbCdEf",
    "TASK_ROLE_ARN": "arn:aws:iam::123456789012:role/weelo-task",
    "EXECUTION_ROLE_ARN": "arn:aws:iam::123456789012:role/weelo-execution",
    "LOG_GROUP": "/weelo/ecs",
    "AWS_REGION": "us-east-1",
}
SECRET_NAMES = {
    "DATABASE_URL",
    "REDIS_URL",
    "JWT_SECRET",
    "JWT_REFRESH_SECRET",
    "FCM_SERVER_KEY",
    "JWT_PREVIOUS_SECRETS",
    "JWT_REFRESH_PREVIOUS_SECRETS",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
}
SECRET_LIKE_NAME = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIAL|PRIVATE|_KEY$|APIKEY")
NOT_SECRETS = {"WEELO_SECRETS_ID", "REDIS_KEY_PREFIX", "WEELO_SECRETS_REFRESH_SECONDS"}
URL_WITH_PASSWORD = re.compile(r"://[^/@\s]*:[^/@\s]+@")
RANDOM_LOOKING = re.compile(r"^[A-Za-z0-9+/=_-]{32,}$")
SECRET_REFERENCE = re.compile(
    r"^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:[A-Za-z0-9/_+=.@-]+:(?P<key>[A-Z_]+)::$"
)
MAX_STOP_TIMEOUT_S = 120  # Fargate's ceiling


def _load_renderer() -> Any:
    path = ROOT / "deploy" / "ecs" / "render_task_definition.py"
    spec = importlib.util.spec_from_file_location("render_task_definition", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _shutdown_timeout_s() -> float:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from libs.runtime.service import SHUTDOWN_TIMEOUT_S

    return SHUTDOWN_TIMEOUT_S


def check_file(path: Path) -> list[str]:
    """Every problem found in the task definition at `path` (empty when it is fine)."""
    try:
        template = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        return [f"not valid JSON: {e}"]
    renderer = _load_renderer()
    unknown = renderer.placeholders(template) - set(renderer.PLACEHOLDERS)
    if unknown:
        return [f"unknown placeholders: {', '.join(sorted(unknown))}"]
    rendered = renderer.render(template, SAMPLE_VALUES)
    problems = validate_with_botocore(rendered)
    problems += check_rules(rendered, service=path.stem)
    return problems


def validate_with_botocore(task_definition: dict[str, Any]) -> list[str]:
    """Problems botocore's RegisterTaskDefinition input model finds."""
    import botocore.session
    from botocore.validate import ParamValidator

    model = botocore.session.get_session().get_service_model("ecs")
    shape = model.operation_model("RegisterTaskDefinition").input_shape
    report = ParamValidator().validate(task_definition, shape)
    if not report.has_errors():
        return []
    return [
        f"botocore RegisterTaskDefinition: {line.strip()}"
        for line in report.generate_report().splitlines()
        if line.strip()
    ]


def check_rules(task_definition: dict[str, Any], service: str) -> list[str]:
    """Our own rules for a rendered task definition of `service`."""
    problems: list[str] = []
    if task_definition.get("family") != f"weelo-{service}":
        problems.append(f"family must be weelo-{service}")
    containers = task_definition.get("containerDefinitions", [])
    if len(containers) != 1:
        problems.append("expected exactly one container")
    for container in containers:
        problems += [
            f"container {container.get('name')}: {p}" for p in _check_container(container, service)
        ]
    return problems


def _check_container(container: dict[str, Any], service: str) -> list[str]:
    problems = [*_environment_problems(container), *_secret_reference_problems(container)]
    expected = ["migrate"] if service == "migrate" else ["run", service]
    if container.get("command") != expected:
        problems.append(f"command must be {expected}")
    if container.get("image") != SAMPLE_VALUES["IMAGE"]:
        problems.append("image must be the ${IMAGE} placeholder")
    if service != "migrate":
        problems += _health_check_problems(container)
    minimum = _shutdown_timeout_s() + 10
    stop = container.get("stopTimeout")
    if not isinstance(stop, int) or not minimum <= stop <= MAX_STOP_TIMEOUT_S:
        problems.append(f"stopTimeout must be {minimum:.0f}..{MAX_STOP_TIMEOUT_S} s, got {stop}")
    if container.get("logConfiguration", {}).get("logDriver") != "awslogs":
        problems.append("logConfiguration must use the awslogs driver")
    return problems


def _health_check_problems(container: dict[str, Any]) -> list[str]:
    if "healthCheck" not in container:
        return ["a long-running service needs a healthCheck"]
    command = " ".join(container["healthCheck"].get("command", []))
    if "/livez" not in command:
        return [
            "the healthCheck must probe /livez: ECS replaces a task that fails it, and /health "
            "fails on every task at once while PostgreSQL or Redis fails over"
        ]
    return []


def _environment_problems(container: dict[str, Any]) -> list[str]:
    problems = []
    for entry in container.get("environment", []):
        name, value = str(entry.get("name", "")), str(entry.get("value", ""))
        if name in SECRET_NAMES or (SECRET_LIKE_NAME.search(name) and name not in NOT_SECRETS):
            problems.append(f"environment {name} looks like a secret: use the secrets block")
        elif URL_WITH_PASSWORD.search(value):
            problems.append(f"environment {name} holds a URL with a password")
        elif RANDOM_LOOKING.match(value) and not value.startswith("arn:"):
            problems.append(f"environment {name} holds a random-looking value")
    if container.get("environmentFiles"):
        problems.append("environmentFiles are not allowed: use the secrets block")
    return problems


def _secret_reference_problems(container: dict[str, Any]) -> list[str]:
    problems = []
    secrets = container.get("secrets", [])
    if not secrets:
        problems.append("no secrets block: DATABASE_URL and REDIS_URL come from Secrets Manager")
    for entry in secrets:
        match = SECRET_REFERENCE.match(str(entry.get("valueFrom", "")))
        if not match:
            problems.append(
                f"secret {entry.get('name')}: valueFrom must be a Secrets Manager ARN "
                "with a JSON key (${SECRET_ARN}:KEY::)"
            )
        elif match.group("key") != entry.get("name"):
            problems.append(f"secret {entry.get('name')}: reads key {match.group('key')}")
    return problems


def main(argv: list[str]) -> int:
    paths = [Path(a) for a in argv] or sorted(TASK_DEFINITIONS.glob("*.json"))
    if not paths:
        print(f"check_task_definitions: no task definitions under {TASK_DEFINITIONS}")
        return 1
    failed = 0
    for path in paths:
        problems = check_file(path)
        for problem in problems:
            print(f"{path}: {problem}")
        failed += bool(problems)
    print(f"check_task_definitions: {len(paths)} checked, {failed} with problems")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
