#!/usr/bin/env python3
"""Check the ECS task definitions under deploy/ecs/task-definitions/, offline.

    .venv/bin/python scripts/check_task_definitions.py [FILE ...]

For each file: render its placeholders with sample values (and the renderer's defaults), validate
the result against botocore's model of ECS `RegisterTaskDefinition` (the same check the AWS CLI
makes before sending), then apply our own rules:
- secrets: none in `environment`; the `secrets` block holds Secrets Manager references only, and
  no JWT key in any task (the gateway reads its keys itself, from the secret its
  WEELO_SECRETS_ID names: `${JWT_SECRET_ARN}`, which no other task definition names);
- roles: `taskRoleArn` is the task's own role placeholder, and no other task's appears;
- health: a container health check on `/livez` for every long-running service (ECS replaces a
  task that fails it: on `/health` a database or Redis failover would fail every task at once);
- `stopTimeout` above the services' own shutdown timeout, awslogs logging, the init process
  (signals, zombie reaping, ECS Exec) and the writable paths ECS Exec's agent needs;
- `runtimePlatform.cpuArchitecture` from `${CPU_ARCHITECTURE}`;
- every service's ADOT collector sidecar: non-essential, its own logs, the image pinned by
  version, scraping the service's own port, with the config of deploy/ecs/collector.yaml.
Prints one line per finding; exit 1 if any.
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
ROLE_NAMES = ("gateway", "broadcast", "acceptance", "timer", "presence", "fanout", "migrate", "ops")
SAMPLE_VALUES = {
    "IMAGE": "123456789012.dkr.ecr.us-east-1.amazonaws.com/weelo:0123456789abcdef",
    "SECRET_ARN": "arn:aws:secretsmanager:us-east-1:123456789012:secret:weelo/app-AbCdEf",
    "JWT_SECRET_ARN": "arn:aws:secretsmanager:us-east-1:123456789012:secret:weelo/jwt-GhIjKl",
    **{
        f"{name.upper()}_TASK_ROLE_ARN": f"arn:aws:iam::123456789012:role/weelo-{name}-task"
        for name in ROLE_NAMES
    },
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
JWT_KEYS = {
    "JWT_SECRET",
    "JWT_REFRESH_SECRET",
    "JWT_PREVIOUS_SECRETS",
    "JWT_REFRESH_PREVIOUS_SECRETS",
}
SECRET_LIKE_NAME = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIAL|PRIVATE|_KEY$|APIKEY")
NOT_SECRETS = {"WEELO_SECRETS_ID", "REDIS_KEY_PREFIX", "WEELO_SECRETS_REFRESH_SECONDS"}
URL_WITH_PASSWORD = re.compile(r"://[^/@\s]*:[^/@\s]+@")
RANDOM_LOOKING = re.compile(r"^[A-Za-z0-9+/=_-]{32,}$")
SECRET_REFERENCE = re.compile(
    r"^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:[A-Za-z0-9/_+=.@-]+:(?P<key>[A-Z_]+)::$"
)
MAX_STOP_TIMEOUT_S = 120  # Fargate's ceiling
# Where ECS Exec's agent writes: a read-only root filesystem needs them as volumes
# (aws/containers-roadmap#1359; ECS's own documentation calls a read-only root unsupported).
EXEC_AGENT_PATHS = ("/managed-agents", "/var/lib/amazon/ssm", "/var/log/amazon/ssm")
COLLECTOR = "collector"


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
    problems = check_template(template, name=path.stem)
    rendered = renderer.render(template, renderer.with_defaults(SAMPLE_VALUES))
    problems += validate_with_botocore(rendered)
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


def check_template(template: dict[str, Any], name: str) -> list[str]:
    """Rules on the placeholders themselves: whose role and whose secret a task may name."""
    problems = [*_role_problems(template, name), *_secrets_id_problems(template, name)]
    if template.get("family") != f"${{TASK_FAMILY_PREFIX}}-{name}":
        problems.append(f"family must be ${{TASK_FAMILY_PREFIX}}-{name} (one per environment)")
    if template.get("runtimePlatform", {}).get("cpuArchitecture") != "${CPU_ARCHITECTURE}":
        problems.append("runtimePlatform.cpuArchitecture must be ${CPU_ARCHITECTURE}")
    collector = _container(template, COLLECTOR)
    if collector is not None:
        if collector.get("image") != "${COLLECTOR_IMAGE}":
            problems.append("the collector's image must be the ${COLLECTOR_IMAGE} placeholder")
        if _env(collector).get("AOT_CONFIG_CONTENT") != "${COLLECTOR_CONFIG}":
            problems.append("the collector's AOT_CONFIG_CONTENT must be ${COLLECTOR_CONFIG}")
    return problems


def _secrets_id_problems(template: dict[str, Any], name: str) -> list[str]:
    secrets_id = _env(_container(template, name) or {}).get("WEELO_SECRETS_ID")
    if name == "gateway":
        if secrets_id != "${JWT_SECRET_ARN}":
            return ["the gateway's WEELO_SECRETS_ID must be ${JWT_SECRET_ARN}"]
        return []
    problems = []
    if "JWT_SECRET_ARN" in _load_renderer().placeholders(template):
        problems.append("only the gateway's task definition may name ${JWT_SECRET_ARN}")
    if secrets_id != "${SECRET_ARN}":
        problems.append("WEELO_SECRETS_ID must be ${SECRET_ARN}")
    return problems


def _role_problems(template: dict[str, Any], name: str) -> list[str]:
    own = f"{name.upper()}_TASK_ROLE_ARN"
    problems = []
    if template.get("taskRoleArn") != f"${{{own}}}":
        problems.append(f"taskRoleArn must be ${{{own}}}, the {name} task's own role")
    used = _load_renderer().placeholders(template)
    others = sorted(p for p in used if p.endswith("_TASK_ROLE_ARN") and p != own)
    if others:
        problems.append(f"names another task's role: {', '.join(others)}")
    return problems


def check_rules(task_definition: dict[str, Any], service: str) -> list[str]:
    """Our own rules for a rendered task definition of `service`."""
    problems: list[str] = []
    if task_definition.get("family") != f"weelo-{service}":
        problems.append(f"family must be weelo-{service}")
    containers = task_definition.get("containerDefinitions", [])
    one_off = service in ("migrate", "ops")
    expected = [service] if one_off else [service, COLLECTOR]
    if [c.get("name") for c in containers] != expected:
        problems.append(f"containers must be {expected}")
    app = _container(task_definition, service)
    if app is not None:
        problems += [f"container {service}: {p}" for p in _check_container(app, service)]
    collector = _container(task_definition, COLLECTOR)
    if collector is not None and app is not None:
        problems += [
            f"container {COLLECTOR}: {p}" for p in _check_collector(collector, app, service)
        ]
    return problems


def _container(task_definition: dict[str, Any], name: str) -> dict[str, Any] | None:
    for container in task_definition.get("containerDefinitions", []):
        if container.get("name") == name:
            return dict(container)
    return None


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {str(e.get("name")): str(e.get("value")) for e in container.get("environment", [])}


def _check_container(container: dict[str, Any], service: str) -> list[str]:
    problems = [*_environment_problems(container), *_secret_reference_problems(container)]
    if container.get("essential") is not True:
        problems.append("the service's own container must be essential")
    problems += _command_problems(container, service)
    if container.get("image") != SAMPLE_VALUES["IMAGE"]:
        problems.append("image must be the ${IMAGE} placeholder")
    if service not in ("migrate", "ops"):
        problems += _health_check_problems(container) + _exec_problems(container)
    if container.get("linuxParameters", {}).get("initProcessEnabled") is not True:
        problems.append("linuxParameters.initProcessEnabled must be true (ECS Exec, signals)")
    minimum = _shutdown_timeout_s() + 10
    stop = container.get("stopTimeout")
    if not isinstance(stop, int) or not minimum <= stop <= MAX_STOP_TIMEOUT_S:
        problems.append(f"stopTimeout must be {minimum:.0f}..{MAX_STOP_TIMEOUT_S} s, got {stop}")
    if container.get("logConfiguration", {}).get("logDriver") != "awslogs":
        problems.append("logConfiguration must use the awslogs driver")
    return problems


def _command_problems(container: dict[str, Any], service: str) -> list[str]:
    command = container.get("command") or []
    if service == "ops":
        return [] if command[:1] == ["ops"] else ["command must be ['ops', ...]"]
    expected = ["migrate"] if service == "migrate" else ["run", service]
    return [] if command == expected else [f"command must be {expected}"]


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


def _exec_problems(container: dict[str, Any]) -> list[str]:
    if not container.get("readonlyRootFilesystem"):
        return []
    writable = {
        m.get("containerPath") for m in container.get("mountPoints", []) if not m.get("readOnly")
    }
    missing = [path for path in EXEC_AGENT_PATHS if path not in writable]
    if missing:
        return [f"ECS Exec's agent needs writable volumes at {', '.join(missing)}"]
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
        name = entry.get("name")
        match = SECRET_REFERENCE.match(str(entry.get("valueFrom", "")))
        if name in JWT_KEYS:
            problems.append(
                f"secret {name}: no task gets a JWT key from ECS (the gateway reads its keys "
                "from the secret its WEELO_SECRETS_ID names)"
            )
        elif not match:
            problems.append(
                f"secret {name}: valueFrom must be a Secrets Manager ARN "
                "with a JSON key (${SECRET_ARN}:KEY::)"
            )
        elif match.group("key") != name:
            problems.append(f"secret {name}: reads key {match.group('key')}")
        elif not str(entry["valueFrom"]).startswith(SAMPLE_VALUES["SECRET_ARN"] + ":"):
            problems.append(f"secret {name}: must come from the app secret ${{SECRET_ARN}}")
    return problems


def _check_collector(collector: dict[str, Any], app: dict[str, Any], service: str) -> list[str]:
    problems = _environment_problems(collector)
    if collector.get("essential") is not False:
        problems.append("the collector must not be essential: without it the service still runs")
    if not _load_renderer().PINNED_COLLECTOR.match(str(collector.get("image", ""))):
        problems.append(
            f"image {collector.get('image')} is not an ADOT collector pinned by version"
        )
    if collector.get("secrets"):
        problems.append("the collector needs no secret")
    if collector.get("logConfiguration", {}).get("logDriver") != "awslogs":
        problems.append("the collector needs a logConfiguration of its own, with awslogs")
    config = _load_renderer().COLLECTOR_CONFIG.read_text(encoding="utf-8")
    return problems + _collector_env_problems(collector, app, service, config)


def _collector_env_problems(
    collector: dict[str, Any], app: dict[str, Any], service: str, config: str
) -> list[str]:
    env = _env(collector)
    ports = [p.get("containerPort") for p in app.get("portMappings", [])]
    problems = []
    if env.get("WEELO_SERVICE") != service:
        problems.append(f"WEELO_SERVICE must be {service}")
    if not ports or env.get("WEELO_METRICS_PORT") != str(ports[0]):
        problems.append(f"WEELO_METRICS_PORT must be the service's port {ports[:1]}")
    if env.get("AOT_CONFIG_CONTENT") != config:
        problems.append("AOT_CONFIG_CONTENT must be deploy/ecs/collector.yaml")
    missing = sorted(set(re.findall(r"\$\{env:([A-Za-z0-9_]+)\}", config)) - set(env))
    if missing:
        problems.append(f"the collector config reads {', '.join(missing)}, not set here")
    return problems + collector_config_problems(config)


def collector_config_problems(text: str) -> list[str]:
    """What is wrong with the collector config `text` (deploy/ecs/collector.yaml)."""
    import yaml

    config = yaml.safe_load(text)
    problems = []
    scrapes = config["receivers"]["prometheus"]["config"]["scrape_configs"]
    targets = [t for s in scrapes for c in s.get("static_configs", []) for t in c["targets"]]
    if targets != ["127.0.0.1:${env:WEELO_METRICS_PORT}"]:
        problems.append(
            f"collector config: must scrape 127.0.0.1:<the service's port>, not {targets}"
        )
    if {s.get("metrics_path") for s in scrapes} != {"/metrics"}:
        problems.append("collector config: must scrape /metrics")
    labels = [c.get("labels", {}).get("service") for s in scrapes for c in s["static_configs"]]
    if labels != ["${env:WEELO_SERVICE}"]:
        problems.append("collector config: every scraped figure needs the label service")
    emf = config["exporters"].get("awsemf", {})
    if emf.get("namespace") != "Weelo":
        problems.append("collector config: awsemf namespace must be Weelo")
    for declaration in emf.get("metric_declarations", []):
        if any("service" not in dims for dims in declaration["dimensions"]):
            problems.append("collector config: every dimension set must include service")
    problems += _pipeline_problems(config)
    return problems


def _pipeline_problems(config: dict[str, Any]) -> list[str]:
    pipeline = config["service"]["pipelines"].get("metrics", {})
    problems = []
    if pipeline.get("receivers") != ["prometheus"] or pipeline.get("exporters") != ["awsemf"]:
        problems.append("collector config: the metrics pipeline must go prometheus -> awsemf")
    undefined = [p for p in pipeline.get("processors", []) if p not in config.get("processors", {})]
    if undefined:
        problems.append(f"collector config: undefined processors {undefined}")
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
