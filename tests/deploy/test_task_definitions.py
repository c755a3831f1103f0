"""ECS task definitions: valid for RegisterTaskDefinition, secrets only in the secrets block, one
task role per service, JWT keys for the gateway alone, liveness on /livez, ECS Exec, the CPU
architecture as a variable, the metrics collector beside every service, the ops task."""

from __future__ import annotations

import copy
import importlib
import importlib.util
import json
import re
import types
from pathlib import Path
from typing import Any

import pytest
import yaml
from cfnlint.decode import cfn_yaml

from libs.cli import SERVICES
from libs.runtime.secrets import PREVIOUS_KEY_LISTS, SECRET_KEYS
from libs.runtime.service import SHUTDOWN_TIMEOUT_S
from tests.deploy.conftest import ROOT

TASK_DEFINITIONS = ROOT / "deploy" / "ecs" / "task-definitions"
COLLECTOR_CONFIG = ROOT / "deploy" / "ecs" / "collector.yaml"
ONE_OFF = ("migrate", "ops")
ALL = (*SERVICES, *ONE_OFF)
JWT_KEYS = {"JWT_SECRET", "JWT_REFRESH_SECRET", *PREVIOUS_KEY_LISTS}


def load_script(path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def checker() -> types.ModuleType:
    return load_script(ROOT / "scripts" / "check_task_definitions.py")


@pytest.fixture(scope="module")
def renderer() -> types.ModuleType:
    return load_script(ROOT / "deploy" / "ecs" / "render_task_definition.py")


def template(name: str) -> dict[str, Any]:
    return dict(json.loads((TASK_DEFINITIONS / f"{name}.json").read_text()))


def container(name: str, which: str | None = None) -> dict[str, Any]:
    """The container `which` (by default the task's own, named like it) of `name`'s template."""
    (found,) = [c for c in template(name)["containerDefinitions"] if c["name"] == (which or name)]
    return dict(found)


def env_of(spec: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in spec.get("environment", [])}


def problems_after(checker: types.ModuleType, tmp_path: Path, name: str, change: Any) -> list[str]:
    """The checker's findings on `name`'s task definition after `change(data)` edited it."""
    data = template(name)
    change(data)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(data))
    return list(checker.check_file(path))


def rendered(renderer: types.ModuleType, checker: types.ModuleType, name: str) -> dict[str, Any]:
    return dict(renderer.render(template(name), renderer.with_defaults(checker.SAMPLE_VALUES)))


def test_there_is_a_task_definition_per_service_and_for_migrations_and_ops() -> None:
    """Every `weelo run` service, `weelo migrate` and `weelo ops` has its task definition file."""
    assert sorted(p.stem for p in TASK_DEFINITIONS.glob("*.json")) == sorted(ALL)


def test_the_renderer_knows_the_services_the_cli_runs(renderer: types.ModuleType) -> None:
    """The renderer (standard library only) lists the same services as `weelo run`."""
    assert tuple(renderer.SERVICES) == tuple(SERVICES)


@pytest.mark.parametrize("name", ALL)
def test_task_definition_passes_the_checker(checker: types.ModuleType, name: str) -> None:
    """botocore's RegisterTaskDefinition model and our rules find nothing in the file."""
    assert checker.check_file(TASK_DEFINITIONS / f"{name}.json") == []


@pytest.mark.parametrize("name", ALL)
def test_no_secret_in_environment(name: str) -> None:
    """Secrets come only from the secrets block, as references into the app secret."""
    spec = container(name)
    assert not set(env_of(spec)) & {*SECRET_KEYS, *PREVIOUS_KEY_LISTS}
    secrets = {s["name"]: s["valueFrom"] for s in spec["secrets"]}
    assert set(secrets) == {"DATABASE_URL", "REDIS_URL"}
    for key, reference in secrets.items():
        assert reference == f"${{SECRET_ARN}}:{key}::"


@pytest.mark.parametrize("name", ALL)
def test_only_the_gateway_reads_the_jwt_secret(name: str) -> None:
    """The gateway's WEELO_SECRETS_ID is the JWT secret; every other task's is the app secret
    (DATABASE_URL, REDIS_URL, FCM_SERVER_KEY), and no other task definition names the JWT one."""
    text = (TASK_DEFINITIONS / f"{name}.json").read_text()
    secrets_id = env_of(container(name))["WEELO_SECRETS_ID"]
    if name == "gateway":
        assert secrets_id == "${JWT_SECRET_ARN}"
    else:
        assert secrets_id == "${SECRET_ARN}"
        assert "JWT_SECRET_ARN" not in text
    assert not {s["name"] for s in container(name)["secrets"]} & JWT_KEYS


@pytest.mark.parametrize("name", ALL)
def test_every_task_has_a_role_of_its_own(name: str) -> None:
    """taskRoleArn is the task's own role placeholder, and no other role is named."""
    text = (TASK_DEFINITIONS / f"{name}.json").read_text()
    assert template(name)["taskRoleArn"] == f"${{{name.upper()}_TASK_ROLE_ARN}}"
    assert set(re.findall(r"\$\{([A-Z]+)_TASK_ROLE_ARN\}", text)) == {name.upper()}


def test_checker_flags_another_services_role(checker: types.ModuleType, tmp_path: Path) -> None:
    """A task definition with the gateway's role, or the old shared one, is reported."""

    def gateway_role(data: dict[str, Any]) -> None:
        data["taskRoleArn"] = "${GATEWAY_TASK_ROLE_ARN}"

    problems = problems_after(checker, tmp_path, "broadcast", gateway_role)
    assert any("taskRoleArn must be ${BROADCAST_TASK_ROLE_ARN}" in p for p in problems)
    assert any("another task's role: GATEWAY_TASK_ROLE_ARN" in p for p in problems)

    def shared_role(data: dict[str, Any]) -> None:
        data["taskRoleArn"] = "${TASK_ROLE_ARN}"

    problems = problems_after(checker, tmp_path, "timer", shared_role)
    assert problems == ["unknown placeholders: TASK_ROLE_ARN"]


def test_checker_flags_jwt_keys_outside_the_gateways_own_secret(
    checker: types.ModuleType, tmp_path: Path
) -> None:
    """The JWT secret named by a non-gateway task, a JWT key in a secrets block, or a gateway
    reading the app secret are each reported."""

    def jwt_for_fanout(data: dict[str, Any]) -> None:
        env = data["containerDefinitions"][0]["environment"]
        env[0] = {"name": "WEELO_SECRETS_ID", "value": "${JWT_SECRET_ARN}"}

    problems = problems_after(checker, tmp_path, "fanout", jwt_for_fanout)
    assert any(
        "only the gateway's task definition may name ${JWT_SECRET_ARN}" in p for p in problems
    )

    def key_in_secrets(data: dict[str, Any]) -> None:
        data["containerDefinitions"][0]["secrets"].append(
            {"name": "JWT_SECRET", "valueFrom": "${SECRET_ARN}:JWT_SECRET::"}
        )
        env = data["containerDefinitions"][0]["environment"]
        env[0] = {"name": "WEELO_SECRETS_ID", "value": "${SECRET_ARN}"}

    problems = problems_after(checker, tmp_path, "gateway", key_in_secrets)
    assert any("secret JWT_SECRET: no task gets a JWT key from ECS" in p for p in problems)
    assert any("the gateway's WEELO_SECRETS_ID must be ${JWT_SECRET_ARN}" in p for p in problems)


def test_checker_flags_a_secret_read_from_the_jwt_secret(
    checker: types.ModuleType, tmp_path: Path
) -> None:
    """DATABASE_URL must come from the app secret, not from the gateway's JWT secret."""

    def from_jwt(data: dict[str, Any]) -> None:
        data["containerDefinitions"][0]["secrets"][0]["valueFrom"] = (
            "${JWT_SECRET_ARN}:DATABASE_URL::"
        )

    problems = problems_after(checker, tmp_path, "gateway", from_jwt)
    assert any("secret DATABASE_URL: must come from the app secret" in p for p in problems)


@pytest.mark.parametrize("name", ALL)
def test_stop_timeout_exceeds_the_services_own_shutdown(name: str) -> None:
    """ECS waits longer after SIGTERM than a service takes to stop, so none is SIGKILLed."""
    assert container(name)["stopTimeout"] >= SHUTDOWN_TIMEOUT_S + 10


@pytest.mark.parametrize("name", SERVICES)
def test_health_check_probes_the_port_the_service_listens_on(name: str) -> None:
    """The container health check calls /livez (never /health) on the service's own port,
    which is exposed."""
    spec = container(name)
    env = env_of(spec)
    port = int(env["GATEWAY_PORT"] if name == "gateway" else env["HEALTH_PORT"])
    assert importlib.import_module(f"services.{name}.main").SERVICE.default_port == port
    assert env["GATEWAY_HOST"] == "0.0.0.0"
    command = " ".join(spec["healthCheck"]["command"])
    assert f"http://127.0.0.1:{port}/livez" in command
    assert "/health" not in command, "a container check must not depend on PostgreSQL or Redis"
    assert [m["containerPort"] for m in spec["portMappings"]] == [port]
    assert spec["command"] == ["run", name]


def test_the_load_balancer_keeps_health_for_readiness() -> None:
    """The gateway's target group checks /health (readiness), not /livez."""
    stack = cfn_yaml.load(str(ROOT / "deploy" / "ecs" / "stack.yaml"))
    group = stack["Resources"]["GatewayTargetGroup"]["Properties"]
    assert group["HealthCheckPath"] == "/health"


def test_checker_flags_a_health_check_on_health(checker: types.ModuleType, tmp_path: Path) -> None:
    """A container health check on /health (which checks PostgreSQL and Redis) is reported."""

    def on_health(data: dict[str, Any]) -> None:
        check = data["containerDefinitions"][0]["healthCheck"]
        check["command"] = [part.replace("/livez", "/health") for part in check["command"]]

    problems = problems_after(checker, tmp_path, "gateway", on_health)
    assert any("healthCheck must probe /livez" in p for p in problems)


@pytest.mark.parametrize("name", ALL)
def test_the_init_process_runs_in_every_task_for_ecs_exec(name: str) -> None:
    """linuxParameters.initProcessEnabled (ECS Exec's agent, zombie reaping) in every task."""
    assert container(name)["linuxParameters"]["initProcessEnabled"] is True


@pytest.mark.parametrize("name", SERVICES)
def test_ecs_execs_agent_has_writable_paths_in_a_read_only_container(name: str) -> None:
    """The read-only root filesystem stays; the paths ECS Exec's agent writes are volumes."""
    spec = container(name)
    assert spec["readonlyRootFilesystem"] is True
    writable = {m["containerPath"] for m in spec["mountPoints"] if not m["readOnly"]}
    assert {"/managed-agents", "/var/lib/amazon/ssm", "/var/log/amazon/ssm"} <= writable
    volumes = {v["name"] for v in template(name)["volumes"]}
    assert {m["sourceVolume"] for m in spec["mountPoints"]} <= volumes


def test_checker_flags_a_service_without_the_init_process_or_exec_paths(
    checker: types.ModuleType, tmp_path: Path
) -> None:
    """initProcessEnabled off, or ECS Exec's writable paths gone, is reported."""

    def no_init(data: dict[str, Any]) -> None:
        app = data["containerDefinitions"][0]
        app["linuxParameters"]["initProcessEnabled"] = False
        app["mountPoints"] = app["mountPoints"][:1]

    problems = problems_after(checker, tmp_path, "presence", no_init)
    assert any("initProcessEnabled must be true" in p for p in problems)
    assert any("ECS Exec's agent needs writable volumes at /managed-agents" in p for p in problems)


@pytest.mark.parametrize("name", ALL)
def test_the_cpu_architecture_is_a_rendered_variable(
    renderer: types.ModuleType, checker: types.ModuleType, name: str
) -> None:
    """cpuArchitecture comes from ${CPU_ARCHITECTURE}: X86_64 unless ARM64 is asked for."""
    assert template(name)["runtimePlatform"]["cpuArchitecture"] == "${CPU_ARCHITECTURE}"
    default = rendered(renderer, checker, name)
    graviton = renderer.render(
        template(name),
        renderer.with_defaults({**checker.SAMPLE_VALUES, "CPU_ARCHITECTURE": "ARM64"}),
    )
    assert default["runtimePlatform"]["cpuArchitecture"] == "X86_64"
    assert graviton["runtimePlatform"]["cpuArchitecture"] == "ARM64"


def test_rendering_refuses_an_unknown_cpu_architecture(renderer: types.ModuleType) -> None:
    """A CPU_ARCHITECTURE that ECS does not know stops the render."""
    with pytest.raises(renderer.RenderError, match="CPU_ARCHITECTURE must be one of"):
        renderer.with_defaults({"CPU_ARCHITECTURE": "arm64"})


def test_checker_flags_a_fixed_cpu_architecture(checker: types.ModuleType, tmp_path: Path) -> None:
    """A literal cpuArchitecture (which Graviton would need edited) is reported."""

    def fixed(data: dict[str, Any]) -> None:
        data["runtimePlatform"]["cpuArchitecture"] = "X86_64"

    problems = problems_after(checker, tmp_path, "acceptance", fixed)
    assert "runtimePlatform.cpuArchitecture must be ${CPU_ARCHITECTURE}" in problems


@pytest.mark.parametrize("name", ALL)
def test_the_family_carries_the_environments_prefix(
    renderer: types.ModuleType, checker: types.ModuleType, name: str
) -> None:
    """Families are account-wide: each is ${TASK_FAMILY_PREFIX}-NAME, production's weelo-NAME
    when unset, another environment's under the prefix the stack outputs."""
    assert template(name)["family"] == f"${{TASK_FAMILY_PREFIX}}-{name}"
    staging = renderer.render(
        template(name),
        renderer.with_defaults({**checker.SAMPLE_VALUES, "TASK_FAMILY_PREFIX": "weelo-staging"}),
    )
    assert rendered(renderer, checker, name)["family"] == f"weelo-{name}"
    assert staging["family"] == f"weelo-staging-{name}"


def test_checker_flags_a_fixed_family(checker: types.ModuleType, tmp_path: Path) -> None:
    """A literal family (which two environments in one account would share) is reported."""

    def fixed(data: dict[str, Any]) -> None:
        data["family"] = "weelo-timer"

    problems = problems_after(checker, tmp_path, "timer", fixed)
    assert "family must be ${TASK_FAMILY_PREFIX}-timer (one per environment)" in problems


@pytest.mark.parametrize("name", SERVICES)
def test_every_service_ships_its_metrics_through_a_collector_sidecar(
    renderer: types.ModuleType, checker: types.ModuleType, name: str
) -> None:
    """Beside the essential service container runs a non-essential ADOT collector, pinned by
    version, with logs of its own, scraping the service's own port with collector.yaml."""
    task = rendered(renderer, checker, name)
    app, collector = task["containerDefinitions"]
    assert (app["name"], app["essential"]) == (name, True)
    assert (collector["name"], collector["essential"]) == ("collector", False)
    assert re.fullmatch(
        r"public\.ecr\.aws/aws-observability/aws-otel-collector:v\d+\.\d+\.\d+", collector["image"]
    )
    assert collector["logConfiguration"]["logDriver"] == "awslogs"
    assert collector["logConfiguration"] is not app["logConfiguration"]
    env = env_of(collector)
    assert env["WEELO_SERVICE"] == name
    assert env["WEELO_METRICS_PORT"] == str(app["portMappings"][0]["containerPort"])
    assert env["AOT_CONFIG_CONTENT"] == COLLECTOR_CONFIG.read_text()
    assert "secrets" not in collector


def test_the_collector_config_scrapes_metrics_into_the_weelo_namespace() -> None:
    """Prometheus scrape of 127.0.0.1:<port>/metrics with label service, to awsemf in namespace
    Weelo with dimension service in every dimension set."""
    config = yaml.safe_load(COLLECTOR_CONFIG.read_text())
    (scrape,) = config["receivers"]["prometheus"]["config"]["scrape_configs"]
    (static,) = scrape["static_configs"]
    assert scrape["metrics_path"] == "/metrics"
    assert static["targets"] == ["127.0.0.1:${env:WEELO_METRICS_PORT}"]
    assert static["labels"] == {"service": "${env:WEELO_SERVICE}"}
    emf = config["exporters"]["awsemf"]
    assert emf["namespace"] == "Weelo"
    assert all("service" in dims for d in emf["metric_declarations"] for dims in d["dimensions"])
    pipeline = config["service"]["pipelines"]["metrics"]
    assert (pipeline["receivers"], pipeline["exporters"]) == (["prometheus"], ["awsemf"])
    assert set(pipeline["processors"]) <= set(config["processors"])


@pytest.mark.parametrize(
    "image", ["public.ecr.aws/aws-observability/aws-otel-collector:latest", "otel/collector:1"]
)
def test_rendering_refuses_a_collector_image_not_pinned_by_version(
    renderer: types.ModuleType, image: str
) -> None:
    """COLLECTOR_IMAGE set to a moving tag, or to another image, stops the render."""
    with pytest.raises(renderer.RenderError, match="COLLECTOR_IMAGE must be"):
        renderer.with_defaults({"COLLECTOR_IMAGE": image})


def test_checker_flags_an_essential_or_unpinned_collector_on_another_port(
    checker: types.ModuleType, tmp_path: Path
) -> None:
    """A collector that is essential, or on the gateway's port for another service, or with a
    literal image, is reported; so is a config off the Weelo namespace."""

    def broken(data: dict[str, Any]) -> None:
        sidecar = data["containerDefinitions"][1]
        sidecar["essential"] = True
        sidecar["image"] = "public.ecr.aws/aws-observability/aws-otel-collector:latest"
        for entry in sidecar["environment"]:
            if entry["name"] == "WEELO_METRICS_PORT":
                entry["value"] = "8000"

    problems = problems_after(checker, tmp_path, "broadcast", broken)
    assert any("the collector must not be essential" in p for p in problems)
    assert any(
        "the collector's image must be the ${COLLECTOR_IMAGE} placeholder" in p for p in problems
    )
    assert any("WEELO_METRICS_PORT must be the service's port [8101]" in p for p in problems)
    other = COLLECTOR_CONFIG.read_text().replace("namespace: Weelo", "namespace: Other")
    assert checker.collector_config_problems(other) == [
        "collector config: awsemf namespace must be Weelo"
    ]


def test_checker_flags_a_service_without_its_collector(
    checker: types.ModuleType, tmp_path: Path
) -> None:
    """A service task definition whose collector sidecar was removed is reported."""

    def without(data: dict[str, Any]) -> None:
        data["containerDefinitions"] = data["containerDefinitions"][:1]

    problems = problems_after(checker, tmp_path, "timer", without)
    assert "containers must be ['timer', 'collector']" in problems


def test_the_ops_task_runs_weelo_ops_with_the_ops_role() -> None:
    """weelo-ops: a family of its own, `weelo ops ...` (lag by default), the ops role, the app
    secret; no port, no health check, no sidecar (a one-off task that exits)."""
    data = template("ops")
    (spec,) = data["containerDefinitions"]
    assert data["family"] == "${TASK_FAMILY_PREFIX}-ops"
    assert data["taskRoleArn"] == "${OPS_TASK_ROLE_ARN}"
    assert spec["name"] == "ops"
    assert spec["command"] == ["ops", "lag"]
    assert "portMappings" not in spec and "healthCheck" not in spec
    assert env_of(spec)["WEELO_SECRETS_ID"] == "${SECRET_ARN}"
    assert spec["logConfiguration"]["options"]["awslogs-stream-prefix"] == "ops"


def test_checker_flags_what_botocore_would_refuse(
    checker: types.ModuleType, renderer: types.ModuleType
) -> None:
    """Unknown fields and wrong types fail the RegisterTaskDefinition model check."""
    broken = copy.deepcopy(template("timer"))
    broken["cpu"] = 256
    broken["containerDefinitions"][0]["healthChek"] = {}
    problems = checker.validate_with_botocore(
        renderer.render(broken, renderer.with_defaults(checker.SAMPLE_VALUES))
    )
    assert any("Invalid type for parameter cpu" in p for p in problems)
    assert any('Unknown parameter in containerDefinitions[0]: "healthChek"' in p for p in problems)


def test_checker_flags_a_secret_in_environment(checker: types.ModuleType, tmp_path: Path) -> None:
    """A JWT key or a URL with a password in `environment` is reported."""

    def leak(data: dict[str, Any]) -> None:
        env = data["containerDefinitions"][0]["environment"]
        env.append({"name": "JWT_SECRET", "value": "x"})
        env.append({"name": "CACHE", "value": "redis://:hunter2@cache.invalid:6379/0"})

    problems = problems_after(checker, tmp_path, "broadcast", leak)
    assert any("environment JWT_SECRET looks like a secret" in p for p in problems)
    assert any("environment CACHE holds a URL with a password" in p for p in problems)


def test_rendering_fills_every_placeholder(renderer: types.ModuleType) -> None:
    """Rendering replaces every ${NAME} (the collector config's own ${env:...} stay for the
    collector) and leaves no placeholder of ours behind."""
    values = {name: f"value-of-{name.lower()}" for name in renderer.PLACEHOLDERS}
    values.update(CPU_ARCHITECTURE="ARM64", COLLECTOR_IMAGE=renderer.COLLECTOR_IMAGE)
    for name in ALL:
        text = json.dumps(renderer.render(template(name), renderer.with_defaults(values)))
        assert not re.search(r"\$\{(?!env:)", text), name
    gateway = json.dumps(renderer.render(template("gateway"), renderer.with_defaults(values)))
    assert "value-of-jwt_secret_arn" in gateway and "value-of-gateway_task_role_arn" in gateway


def test_rendering_refuses_a_missing_value(renderer: types.ModuleType) -> None:
    """A placeholder without a value stops the render instead of registering a broken ARN."""
    values = {name: "x" for name in renderer.PLACEHOLDERS if name != "JWT_SECRET_ARN"}
    values.update(CPU_ARCHITECTURE="X86_64", COLLECTOR_IMAGE=renderer.COLLECTOR_IMAGE)
    with pytest.raises(renderer.RenderError, match="JWT_SECRET_ARN"):
        renderer.render(template("gateway"), renderer.with_defaults(values))
