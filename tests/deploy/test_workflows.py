"""GitHub workflows: tests gate the deploy, only main deploys, OIDC only, one production image
built with buildx for the listed platforms, and a re-run that skips a build already pushed."""

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


def steps_named(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {str(step.get("name", step.get("uses", ""))): step for step in job["steps"]}


def test_only_main_deploys_even_when_started_by_hand(deploy: dict[str, Any]) -> None:
    """The deploy job runs only for refs/heads/main: "Run workflow" from another branch (or a
    tag) runs the tests but never the job that gets the deploy role."""
    assert "workflow_dispatch" in deploy["on"]
    assert deploy["jobs"]["deploy"]["if"] == "github.ref == 'refs/heads/main'"


def test_the_runbook_asks_for_a_main_only_environment_rule() -> None:
    """docs/operations.md tells the operator to restrict the production environment's deployment
    branches to main (the workflow file of another branch could drop the job's `if:`)."""
    text = " ".join((ROOT / "docs" / "operations.md").read_text().split())
    assert "Deployment branches and tags" in text
    assert "add the rule `main` (and no other)" in text


def test_deploy_builds_the_production_image_and_waits_for_stability(deploy: dict[str, Any]) -> None:
    """The production target, built with buildx for IMAGE_PLATFORMS (linux/amd64) and pushed to
    ECR, then deploy.sh with its stability wait."""
    job = deploy["jobs"]["deploy"]
    script = run_lines(job)
    assert job["env"]["IMAGE_PLATFORMS"] == "linux/amd64"
    assert 'docker buildx build --platform "$IMAGE_PLATFORMS" --target production' in script
    assert '--tag "$REPOSITORY_URI:$IMAGE_TAG" --push .' in script
    assert "deploy/ecs/deploy.sh" in script
    assert "docker build " not in script and "docker push" not in script
    deploy_sh = (ROOT / "deploy" / "ecs" / "deploy.sh").read_text()
    assert "aws ecs wait services-stable" in deploy_sh
    assert "rolloutState" in deploy_sh
    assert "aws ecs wait tasks-stopped" in deploy_sh  # the migration finishes first


def test_arm64_needs_only_the_platforms_list(deploy: dict[str, Any]) -> None:
    """Buildx is set up, and QEMU whenever IMAGE_PLATFORMS names arm64, so adding linux/arm64 to
    the list is the whole build change; the tasks' architecture comes from a variable."""
    job = deploy["jobs"]["deploy"]
    steps = steps_named(job)
    buildx = steps["Set up Buildx"]
    qemu = steps["Set up QEMU (arm64 on an amd64 runner)"]
    assert buildx["uses"].startswith("docker/setup-buildx-action@")
    assert qemu["uses"].startswith("docker/setup-qemu-action@")
    assert "contains(env.IMAGE_PLATFORMS, 'arm64')" in qemu["if"]
    assert job["env"]["CPU_ARCHITECTURE"] == "${{ vars.WEELO_CPU_ARCHITECTURE }}"
    guard = steps["The image is built for the tasks' CPU architecture"]["run"]
    assert "ARM64) wanted=linux/arm64" in guard and '",$IMAGE_PLATFORMS,"' in guard


def test_a_rerun_skips_the_build_when_the_tag_is_in_ecr(deploy: dict[str, Any]) -> None:
    """Before building, image-exists.sh asks ECR for the tag; login, build and push run only when
    it is not there, and the deploy itself always runs (with the image there is)."""
    job = deploy["jobs"]["deploy"]
    names = [str(step.get("name", "")) for step in job["steps"]]
    steps = steps_named(job)
    check = steps["Is this commit's image in ECR already?"]
    assert check["id"] == "image"
    assert check["run"] == 'deploy/ecs/image-exists.sh >> "$GITHUB_OUTPUT"'
    skipped = ["Log in to ECR", "Set up Buildx", "Build and push the production image"]
    for name in [*skipped, "Set up QEMU (arm64 on an amd64 runner)"]:
        assert steps[name]["if"].startswith("steps.image.outputs.exists != 'true'"), name
        assert names.index(name) > names.index(check["name"])
    assert "if" not in steps["Migrate, then deploy every service and wait for stability"]


def test_every_action_is_pinned_to_a_commit(deploy: dict[str, Any], ci: dict[str, Any]) -> None:
    """Third-party actions are referenced by full commit SHA, not a movable tag."""
    for workflow in (ci, deploy):
        for job in workflow["jobs"].values():
            for step in job.get("steps", []):
                if "uses" in step:
                    ref = step["uses"].split("@")[1]
                    assert len(ref) == 40 and all(c in "0123456789abcdef" for c in ref)
