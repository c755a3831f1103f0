"""The stack's JWT rotation Lambda, run step by step against moto's Secrets Manager."""

from __future__ import annotations

import json
import types
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from cfnlint.decode import cfn_yaml

from libs.runtime.keyring import open_keyring
from libs.runtime.settings import load_settings
from tests.deploy.conftest import ROOT

MakeSecret = Callable[[dict[str, Any] | str], str]
STEPS = ("createSecret", "setSecret", "testSecret", "finishSecret")
KEPT = {
    "DATABASE_URL": "postgresql://weelo_app@db.invalid:5432/weelo",
    "REDIS_URL": "rediss://r.invalid:6379/0",
    "FCM_SERVER_KEY": "test-fcm-placeholder",
}


@pytest.fixture(scope="module")
def rotation() -> types.ModuleType:
    """The Lambda's code, taken from deploy/ecs/stack.yaml as CloudFormation would deploy it."""
    template = cfn_yaml.load(str(ROOT / "deploy" / "ecs" / "stack.yaml"))
    code = template["Resources"]["JwtRotationFunction"]["Properties"]["Code"]["ZipFile"]
    assert len(code) <= 4096, "inline Lambda code is limited to 4096 characters"
    module = types.ModuleType("jwt_rotation")
    exec(compile(str(code), "stack.yaml#JwtRotationFunction", "exec"), module.__dict__)
    return module


def rotate(rotation: types.ModuleType, secretsmanager: Any, arn: str) -> str:
    """Run the four rotation steps as Secrets Manager would; return the new version id."""
    token = str(uuid.uuid4())
    for step in STEPS:
        event = {"SecretId": arn, "ClientRequestToken": token, "Step": step}
        rotation.handler(event, None, client=secretsmanager)
    return token


def current(secretsmanager: Any, arn: str) -> dict[str, str]:
    """The AWSCURRENT version (named explicitly: moto's default version ignores stage moves)."""
    value = secretsmanager.get_secret_value(SecretId=arn, VersionStage="AWSCURRENT")
    return dict(json.loads(value["SecretString"]))


@pytest.fixture
def rotating_secret(make_secret: MakeSecret, secretsmanager: Any) -> str:
    """An application secret with rotation enabled (moto applies no Lambda of its own)."""
    arn = make_secret({**KEPT, "JWT_SECRET": "test-generated-key-from-cloudformation"})
    secretsmanager.rotate_secret(
        SecretId=arn, RotationRules={"AutomaticallyAfterDays": 30}, RotateImmediately=False
    )
    return arn


def test_rotation_makes_new_jwt_keys_and_keeps_everything_else(
    rotation: types.ModuleType, secretsmanager: Any, rotating_secret: str
) -> None:
    """A rotation gives fresh JWT keys, lists the replaced one as previous, keeps other keys."""
    before = current(secretsmanager, rotating_secret)
    token = rotate(rotation, secretsmanager, rotating_secret)
    after = current(secretsmanager, rotating_secret)
    stages = secretsmanager.describe_secret(SecretId=rotating_secret)["VersionIdsToStages"]
    assert "AWSCURRENT" in stages[token]
    assert after["JWT_SECRET"] != before["JWT_SECRET"]
    assert len(after["JWT_SECRET"]) >= 32 and len(after["JWT_REFRESH_SECRET"]) >= 32
    assert after["JWT_PREVIOUS_SECRETS"] == before["JWT_SECRET"]
    assert "JWT_REFRESH_PREVIOUS_SECRETS" not in after  # there was no refresh key before
    assert {k: after[k] for k in KEPT} == KEPT


def test_keyring_accepts_the_replaced_key_until_the_next_rotation(
    rotation: types.ModuleType, secretsmanager: Any, rotating_secret: str, aws_env: dict[str, str]
) -> None:
    """After one rotation the old key still verifies; after a second one it is refused."""
    env = {**aws_env, "WEELO_SECRETS_ID": rotating_secret}
    settings = load_settings(
        {**env, "DATABASE_URL": "postgresql://unused", "REDIS_URL": "redis://u"}
    )
    rotate(rotation, secretsmanager, rotating_secret)
    first = current(secretsmanager, rotating_secret)
    rotate(rotation, secretsmanager, rotating_secret)
    second = current(secretsmanager, rotating_secret)

    keyring = open_keyring(settings, env, promote_after_s=0)  # which keys verify, not which signs
    assert keyring.access_secrets() == (second["JWT_SECRET"], first["JWT_SECRET"])
    assert keyring.refresh_secrets() == (second["JWT_REFRESH_SECRET"], first["JWT_REFRESH_SECRET"])


def test_a_repeated_create_step_changes_nothing(
    rotation: types.ModuleType, secretsmanager: Any, rotating_secret: str
) -> None:
    """Secrets Manager may retry createSecret: the pending version is made once, not twice."""
    token = str(uuid.uuid4())
    event = {"SecretId": rotating_secret, "ClientRequestToken": token, "Step": "createSecret"}
    rotation.handler(event, None, client=secretsmanager)
    pending = secretsmanager.get_secret_value(
        SecretId=rotating_secret, VersionId=token, VersionStage="AWSPENDING"
    )["SecretString"]
    rotation.handler(event, None, client=secretsmanager)
    again = secretsmanager.get_secret_value(
        SecretId=rotating_secret, VersionId=token, VersionStage="AWSPENDING"
    )["SecretString"]
    assert again == pending


def test_rotation_refuses_a_secret_without_rotation_enabled(
    rotation: types.ModuleType, secretsmanager: Any, make_secret: MakeSecret
) -> None:
    """The function does nothing to a secret that has no rotation configured."""
    arn = make_secret({"JWT_SECRET": "test-not-rotating-key-000000000000"})
    event = {"SecretId": arn, "ClientRequestToken": str(uuid.uuid4()), "Step": "createSecret"}
    with pytest.raises(ValueError, match="rotation is not enabled"):
        rotation.handler(event, None, client=secretsmanager)
