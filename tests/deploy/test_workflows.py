"""GitHub workflows: tests gate the deploy, OIDC only, one production image for linux/amd64."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.deploy.conftest import ROOT

WORKFLOWS = ROOT / ".github" / "workflows"


def load(name: str) -> dict[str, Any]:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as True
    return dict(data)


def run_lines(job: dict[str, Any]) -> str:
    return "\n".join(step.get("run", "") for step in job.get("steps", []))


@pytest.fixture(scope="module")
def ci() -> dict[str, Any]:
    return load("ci.yml")


@pytest.fixture(scope="module")
def deploy() -> dict[str, Any]:
    return load("deploy.yml")


def test_ci_tests_against_postgres_and_redis_containers(ci: dict[str, Any]) -> None:
    """CI runs lint and the whole suite with PostgreSQL and Redis service containers."""
    job = ci["jobs"]["test"]
    assert {"postgres", "redis"} <= set(job["services"])
    assert job["env"]["TEST_DATABASE_URL"].startswith("postgresql://")
    assert job["env"]["TEST_REDIS_URL"].startswith("redis://")
    assert "make test" in run_lines(job)
    assert job["permissions"] == {"contents": "read"}
    assert "workflow_call" in ci["on"]


def test_deploy_runs_on_main_only_after_the_tests_pass(deploy: dict[str, Any]) -> None:
    """A push to main runs the CI workflow first; the deploy job needs it to succeed."""
    assert deploy["on"]["push"]["branches"] == ["main"]
    assert deploy["jobs"]["test"]["uses"] == "./.github/workflows/ci.yml"
    assert deploy["jobs"]["deploy"]["needs"] == "test"
    assert deploy["concurrency"]["cancel-in-progress"] is False


def test_deploy_uses_oidc_and_no_long_lived_keys(deploy: dict[str, Any]) -> None:
    """Credentials come from GitHub OIDC; no workflow mentions an access key."""
    job = deploy["jobs"]["deploy"]
    assert job["permissions"] == {"contents": "read", "id-token": "write"}
    assert job["environment"] == "production"  # the OIDC subject the deploy role trusts
    assert deploy["permissions"] == {}
    (credentials,) = [s for s in job["steps"] if "configure-aws-credentials" in s.get("uses", "")]
    assert "role-to-assume" in credentials["with"]
    for path in WORKFLOWS.glob("*.yml"):
        text = path.read_text()
        assert "aws-access-key-id" not in text and "AWS_SECRET_ACCESS_KEY" not in text


def test_deploy_builds_the_production_image_and_waits_for_stability(deploy: dict[str, Any]) -> None:
    """One linux/amd64 production image, pushed to ECR, then deploy.sh with its stability wait."""
    script = run_lines(deploy["jobs"]["deploy"])
    assert "docker build --platform linux/amd64 --target production" in script
    assert 'docker push "$REPOSITORY_URI:$IMAGE_TAG"' in script
    assert "deploy/ecs/deploy.sh" in script
    deploy_sh = (ROOT / "deploy" / "ecs" / "deploy.sh").read_text()
    assert "aws ecs wait services-stable" in deploy_sh
    assert "rolloutState" in deploy_sh
    assert "aws ecs wait tasks-stopped" in deploy_sh  # the migration finishes first


def test_every_action_is_pinned_to_a_commit(deploy: dict[str, Any], ci: dict[str, Any]) -> None:
    """Third-party actions are referenced by full commit SHA, not a movable tag."""
    for workflow in (ci, deploy):
        for job in workflow["jobs"].values():
            for step in job.get("steps", []):
                if "uses" in step:
                    ref = step["uses"].split("@")[1]
                    assert len(ref) == 40 and all(c in "0123456789abcdef" for c in ref)
