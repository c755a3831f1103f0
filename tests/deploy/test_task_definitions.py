"""ECS task definitions: valid for RegisterTaskDefinition, secrets only in the secrets block."""

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

from libs.cli import SERVICES
from libs.runtime.secrets import PREVIOUS_KEY_LISTS, SECRET_KEYS
from libs.runtime.service import SHUTDOWN_TIMEOUT_S
from tests.deploy.conftest import ROOT

TASK_DEFINITIONS = ROOT / "deploy" / "ecs" / "task-definitions"


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


def container(name: str) -> dict[str, Any]:
    data = json.loads((TASK_DEFINITIONS / f"{name}.json").read_text())
    return dict(data["containerDefinitions"][0])


def test_there_is_one_task_definition_per_service_and_one_for_migrations() -> None:
    """Every `weelo run` service and `weelo migrate` has its task definition file."""
    assert sorted(p.stem for p in TASK_DEFINITIONS.glob("*.json")) == sorted([*SERVICES, "migrate"])


@pytest.mark.parametrize("name", [*SERVICES, "migrate"])
def test_task_definition_passes_the_checker(checker: types.ModuleType, name: str) -> None:
    """botocore's RegisterTaskDefinition model and our rules find nothing in the file."""
    assert checker.check_file(TASK_DEFINITIONS / f"{name}.json") == []


@pytest.mark.parametrize("name", [*SERVICES, "migrate"])
def test_no_secret_in_environment(name: str) -> None:
    """Secrets come only from the secrets block as Secrets Manager references, never env."""
    spec = container(name)
    names = {e["name"] for e in spec["environment"]}
    assert not names & {*SECRET_KEYS, *PREVIOUS_KEY_LISTS}
    secrets = {s["name"]: s["valueFrom"] for s in spec["secrets"]}
    assert {"DATABASE_URL", "REDIS_URL"} <= set(secrets)
    for key, reference in secrets.items():
        assert reference == f"${{SECRET_ARN}}:{key}::"
    env = {e["name"]: e["value"] for e in spec["environment"]}
    assert env["WEELO_SECRETS_ID"] == "${SECRET_ARN}"


def test_gateway_gets_the_jwt_keys() -> None:
    """The gateway, which verifies tokens, is the service whose secrets block has the JWT keys."""
    secrets = {s["name"] for s in container("gateway")["secrets"]}
    assert {"JWT_SECRET", "JWT_REFRESH_SECRET"} <= secrets


@pytest.mark.parametrize("name", [*SERVICES, "migrate"])
def test_stop_timeout_exceeds_the_services_own_shutdown(name: str) -> None:
    """ECS waits longer after SIGTERM than a service takes to stop, so none is SIGKILLed."""
    assert container(name)["stopTimeout"] >= SHUTDOWN_TIMEOUT_S + 10


@pytest.mark.parametrize("name", SERVICES)
def test_health_check_probes_the_port_the_service_listens_on(name: str) -> None:
    """The container health check calls /livez (never /health) on the service's own port,
    which is exposed."""
    spec = container(name)
    env = {e["name"]: e["value"] for e in spec["environment"]}
    port = int(env["GATEWAY_PORT"] if name == "gateway" else env["HEALTH_PORT"])
    assert importlib.import_module(f"services.{name}.main").SERVICE.default_port == port
    assert env["GATEWAY_HOST"] == "0.0.0.0"
    command = " ".join(spec["healthCheck"]["command"])
    assert f"http://127.0.0.1:{port}/livez" in command
    assert "/health" not in command, "a container check must not depend on PostgreSQL or Redis"
    assert [m["containerPort"] for m in spec["portMappings"]] == [port]
    assert spec["command"] == ["run", name]


def test_checker_flags_a_secret_in_environment(checker: types.ModuleType, tmp_path: Path) -> None:
    """A JWT key or a URL with a password in `environment` is reported."""
    data = json.loads((TASK_DEFINITIONS / "broadcast.json").read_text())
    env = data["containerDefinitions"][0]["environment"]
    env.append({"name": "JWT_SECRET", "value": "x"})
    env.append({"name": "CACHE", "value": "redis://:hunter2@cache.invalid:6379/0"})
    path = tmp_path / "broadcast.json"
    path.write_text(json.dumps(data))
    problems = checker.check_file(path)
    assert any("environment JWT_SECRET looks like a secret" in p for p in problems)
    assert any("environment CACHE holds a URL with a password" in p for p in problems)


def test_checker_flags_a_health_check_on_health(checker: types.ModuleType, tmp_path: Path) -> None:
    """A container health check on /health (which checks PostgreSQL and Redis) is reported."""
    data = json.loads((TASK_DEFINITIONS / "gateway.json").read_text())
    check = data["containerDefinitions"][0]["healthCheck"]
    check["command"] = [part.replace("/livez", "/health") for part in check["command"]]
    path = tmp_path / "gateway.json"
    path.write_text(json.dumps(data))
    assert any("healthCheck must probe /livez" in p for p in checker.check_file(path))


def test_checker_flags_what_botocore_would_refuse(checker: types.ModuleType) -> None:
    """Unknown fields and wrong types fail the RegisterTaskDefinition model check."""
    data = json.loads((TASK_DEFINITIONS / "timer.json").read_text())
    broken = copy.deepcopy(data)
    broken["cpu"] = 256
    broken["containerDefinitions"][0]["healthChek"] = {}
    rendered = load_script(ROOT / "deploy/ecs/render_task_definition.py").render(
        broken, checker.SAMPLE_VALUES
    )
    problems = checker.validate_with_botocore(rendered)
    assert any("Invalid type for parameter cpu" in p for p in problems)
    assert any('Unknown parameter in containerDefinitions[0]: "healthChek"' in p for p in problems)


def test_rendering_fills_every_placeholder(renderer: types.ModuleType) -> None:
    """Rendering replaces every ${NAME} and leaves no placeholder behind."""
    values = {name: f"value-of-{name.lower()}" for name in renderer.PLACEHOLDERS}
    template = json.loads((TASK_DEFINITIONS / "gateway.json").read_text())
    text = json.dumps(renderer.render(template, values))
    assert not re.search(r"\$\{", text)
    assert "value-of-secret_arn:JWT_SECRET::" in text


def test_rendering_refuses_a_missing_value(renderer: types.ModuleType) -> None:
    """A placeholder without a value stops the render instead of registering a broken ARN."""
    values = {name: "x" for name in renderer.PLACEHOLDERS if name != "SECRET_ARN"}
    template = json.loads((TASK_DEFINITIONS / "gateway.json").read_text())
    with pytest.raises(renderer.RenderError, match="SECRET_ARN"):
        renderer.render(template, values)
