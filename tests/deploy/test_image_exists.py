"""deploy/ecs/image-exists.sh, the deploy's "is this commit's image pushed already?", against
moto's ECR (server mode, over HTTP) with the real AWS CLI: a re-run of a deploy skips the build
and push that an immutable tag would refuse, and no error is mistaken for "not there"."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from tests.deploy.conftest import FAKE_CREDENTIALS, REGION, ROOT

SCRIPT = ROOT / "deploy" / "ecs" / "image-exists.sh"
ACCOUNT = "123456789012"  # moto's
MANIFEST = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
    "config": {
        "mediaType": "application/vnd.docker.container.image.v1+json",
        "size": 2,
        "digest": "sha256:" + "a" * 64,
    },
    "layers": [],
}

pytestmark = [
    pytest.mark.process,  # runs the script, and the AWS CLI in it
    pytest.mark.skipif(shutil.which("aws") is None, reason="the AWS CLI is not installed"),
]


@pytest.fixture
def ecr(moto_endpoint: str) -> Any:
    """A botocore ECR client on the moto server (the test's own hands)."""
    import botocore.session  # here: only the tests that use it pay for importing it

    return botocore.session.get_session().create_client(
        "ecr",
        region_name=REGION,
        endpoint_url=moto_endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture
def repository(ecr: Any) -> str:
    """A new immutable-tag repository; its URI."""
    name = f"weelo-test-{uuid.uuid4().hex[:8]}"
    ecr.create_repository(repositoryName=name, imageTagMutability="IMMUTABLE")
    return f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/{name}"


def run_script(moto_endpoint: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The script as the workflow runs it, its AWS CLI pointed at the moto server."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "TEST_"))}
    environ.update(
        FAKE_CREDENTIALS,
        AWS_CONFIG_FILE="/dev/null",
        AWS_SHARED_CREDENTIALS_FILE="/dev/null",
        AWS_ENDPOINT_URL=moto_endpoint,
        **env,
    )
    return subprocess.run(
        ["bash", str(SCRIPT)], env=environ, capture_output=True, text=True, timeout=60, check=False
    )


Push = Callable[[str, str], None]


@pytest.fixture
def push(ecr: Any) -> Push:
    def pushed(uri: str, tag: str) -> None:
        ecr.put_image(
            repositoryName=uri.split("/", 1)[1], imageManifest=json.dumps(MANIFEST), imageTag=tag
        )

    return pushed


def test_a_tag_not_pushed_yet_is_reported_missing(moto_endpoint: str, repository: str) -> None:
    """A commit whose image ECR does not hold: exists=false, exit 0 (build and push follow)."""
    done = run_script(moto_endpoint, REPOSITORY_URI=repository, IMAGE_TAG="c0ffee" * 6 + "beef")
    assert (done.returncode, done.stdout) == (0, "exists=false\n"), done.stderr


def test_a_tag_pushed_before_is_reported_there(
    moto_endpoint: str, repository: str, push: Push
) -> None:
    """A re-run for a commit already pushed: exists=true, so the build and push are skipped."""
    tag = "0123456789abcdef0123456789abcdef01234567"
    push(repository, tag)
    done = run_script(moto_endpoint, REPOSITORY_URI=repository, IMAGE_TAG=tag)
    assert (done.returncode, done.stdout) == (0, "exists=true\n"), done.stderr


def test_any_other_failure_stops_the_deploy(moto_endpoint: str) -> None:
    """A repository ECR does not have (or no access) is an error, never exists=false."""
    missing = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/weelo-nowhere-{uuid.uuid4().hex[:6]}"
    done = run_script(moto_endpoint, REPOSITORY_URI=missing, IMAGE_TAG="abc")
    assert done.returncode == 1
    assert done.stdout == ""
    assert "RepositoryNotFoundException" in done.stderr
