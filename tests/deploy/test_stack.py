"""deploy/ecs/stack.yaml: the properties production depends on are present, and cfn-lint agrees."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode import cfn_yaml

from libs.cli import SERVICES
from libs.runtime.settings import load_settings
from libs.runtime.tokens import REFRESH_TTL_S
from tests.deploy.conftest import ROOT

STACK = ROOT / "deploy" / "ecs" / "stack.yaml"
RULES = ROOT / "deploy" / "cfn-rules"
CFN_LINT = Path(sys.executable).parent / "cfn-lint"


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return dict(cfn_yaml.load(str(STACK)))


def resources_of(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}


def test_database_is_protected(template: dict[str, Any]) -> None:
    """RDS: deletion protection, 7-day backups, Multi-AZ, managed password, snapshot on delete."""
    (database,) = resources_of(template, "AWS::RDS::DBInstance").values()
    props = database["Properties"]
    assert props["Engine"] == "postgres"
    assert props["DeletionProtection"] is True
    assert props["BackupRetentionPeriod"] >= 7
    assert props["MultiAZ"] is True
    assert props["ManageMasterUserPassword"] is True
    assert "MasterUserPassword" not in props
    assert props["StorageEncrypted"] is True
    assert props["PubliclyAccessible"] is False
    assert database["DeletionPolicy"] == "Snapshot"
    assert database["UpdateReplacePolicy"] == "Snapshot"


def test_database_requires_tls(template: dict[str, Any]) -> None:
    """The database's parameter group forces SSL connections."""
    (group,) = resources_of(template, "AWS::RDS::DBParameterGroup").values()
    assert group["Properties"]["Parameters"]["rds.force_ssl"] == "1"


def test_every_service_has_an_ecs_service_that_rolls_back(template: dict[str, Any]) -> None:
    """One ECS service per Weelo service, each with circuit breaker rollback and 100% healthy."""
    services = resources_of(template, "AWS::ECS::Service").values()
    assert sorted(s["Properties"]["ServiceName"] for s in services) == sorted(
        f"weelo-{name}" for name in SERVICES
    )
    for service in services:
        props = service["Properties"]
        config = props["DeploymentConfiguration"]
        assert config["DeploymentCircuitBreaker"] == {"Enable": True, "Rollback": True}
        assert config["MinimumHealthyPercent"] == 100
        assert props["TaskDefinition"] == props["ServiceName"]  # the family's latest revision
        task_definition = ROOT / "deploy/ecs/task-definitions" / f"{props['ServiceName'][6:]}.json"
        assert task_definition.exists()
        assert props["NetworkConfiguration"]["AwsvpcConfiguration"]["AssignPublicIp"] == "DISABLED"


def test_load_balancer_checks_readiness_and_idles_less_than_the_gateway(
    template: dict[str, Any],
) -> None:
    """The target group checks /health; the load balancer drops an idle connection before the
    gateway's keep-alive timeout would, so it never reuses one the gateway is closing."""
    (group,) = resources_of(template, "AWS::ElasticLoadBalancingV2::TargetGroup").values()
    assert group["Properties"]["HealthCheckPath"] == "/health"
    (balancer,) = resources_of(template, "AWS::ElasticLoadBalancingV2::LoadBalancer").values()
    attributes = {a["Key"]: a["Value"] for a in balancer["Properties"]["LoadBalancerAttributes"]}
    gateway = json.loads((ROOT / "deploy/ecs/task-definitions/gateway.json").read_text())
    env = {e["name"]: e["value"] for e in gateway["containerDefinitions"][0]["environment"]}
    secrets = dict.fromkeys(("DATABASE_URL", "REDIS_URL", "JWT_SECRET", "JWT_REFRESH_SECRET"), "x")
    keepalive = load_settings({**env, **secrets}).http_keepalive_seconds
    assert int(attributes["idle_timeout.timeout_seconds"]) < keepalive


def test_redis_is_encrypted_and_replicated(template: dict[str, Any]) -> None:
    """ElastiCache Redis: TLS, encryption at rest, AUTH from a generated secret, failover."""
    (redis,) = resources_of(template, "AWS::ElastiCache::ReplicationGroup").values()
    props = redis["Properties"]
    assert props["TransitEncryptionEnabled"] is True
    assert props["AtRestEncryptionEnabled"] is True
    assert props["AutomaticFailoverEnabled"] is True
    assert props["MultiAZEnabled"] is True
    assert "resolve:secretsmanager" in str(props["AuthToken"])


def test_application_secret_rotates_no_faster_than_refresh_tokens_live(
    template: dict[str, Any],
) -> None:
    """The app secret rotates through the stack's Lambda, at most once per refresh-token life."""
    (schedule,) = resources_of(template, "AWS::SecretsManager::RotationSchedule").values()
    props = schedule["Properties"]
    assert props["SecretId"] == {"Ref": "AppSecret"}
    assert props["RotationLambdaARN"] == {"Fn::GetAtt": ["JwtRotationFunction", "Arn"]}
    assert props["RotationRules"]["AutomaticallyAfterDays"] == {"Ref": "JwtRotationDays"}
    assert template["Parameters"]["JwtRotationDays"]["MinValue"] * 86400 >= REFRESH_TTL_S
    assert "SecretString" not in template["Resources"]["AppSecret"]["Properties"]


def test_deploy_role_trusts_only_this_repository_environment(template: dict[str, Any]) -> None:
    """GitHub OIDC: audience sts.amazonaws.com and one repository's deploy environment only."""
    provider = template["Resources"]["GitHubOidcProvider"]["Properties"]
    assert provider["Url"] == "https://token.actions.githubusercontent.com"
    assert provider["ClientIdList"] == ["sts.amazonaws.com"]
    (trust,) = template["Resources"]["DeployRole"]["Properties"]["AssumeRolePolicyDocument"][
        "Statement"
    ]
    assert trust["Action"] == "sts:AssumeRoleWithWebIdentity"
    condition = trust["Condition"]["StringEquals"]
    assert condition["token.actions.githubusercontent.com:aud"] == "sts.amazonaws.com"
    assert condition["token.actions.githubusercontent.com:sub"] == {
        "Fn::Sub": "repo:${GitHubRepository}:environment:${GitHubEnvironment}"
    }


def test_deploy_role_is_least_privilege(template: dict[str, Any]) -> None:
    """No wildcard action; a wildcard resource only where the AWS API allows nothing narrower."""
    (policy,) = template["Resources"]["DeployRole"]["Properties"]["Policies"]
    allowed_anywhere = {
        "ecr:GetAuthorizationToken",
        "ecs:DescribeTaskDefinition",
        "ecs:RegisterTaskDefinition",
    }
    for statement in policy["PolicyDocument"]["Statement"]:
        actions = (
            statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        )
        assert statement["Effect"] == "Allow"
        assert all("*" not in action for action in actions)
        if statement["Resource"] == "*":
            assert set(actions) <= allowed_anywhere, statement["Sid"]
        if "iam:PassRole" in actions:
            assert statement["Condition"]["StringEquals"]["iam:PassedToService"] == (
                "ecs-tasks.amazonaws.com"
            )


def test_tasks_may_read_only_the_application_secret(template: dict[str, Any]) -> None:
    """Task and execution roles read the app secret and nothing else from Secrets Manager."""
    for role in ("TaskRole", "TaskExecutionRole"):
        for policy in template["Resources"][role]["Properties"]["Policies"]:
            for statement in policy["PolicyDocument"]["Statement"]:
                assert statement["Resource"] == {"Ref": "AppSecret"}


def test_cfn_lint_passes_with_the_weelo_rules() -> None:
    """cfn-lint, with the Weelo rules in deploy/cfn-rules, finds nothing in the stack."""
    result = subprocess.run(
        [str(CFN_LINT), "--append-rules", str(RULES), "--template", str(STACK)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_weelo_rules_catch_a_weakened_stack(tmp_path: Path) -> None:
    """Dropping an RDS or ECS safety setting makes cfn-lint fail with the Weelo rule's message."""
    text = STACK.read_text()
    weakened = (
        text.replace("DeletionProtection: true", "DeletionProtection: false")
        .replace("BackupRetentionPeriod: 7", "BackupRetentionPeriod: 1")
        .replace("MultiAZ: true", "MultiAZ: false")
        .replace("    DeletionPolicy: Snapshot\n", "    DeletionPolicy: Delete\n")
        .replace("MinimumHealthyPercent: 100", "MinimumHealthyPercent: 50")
    )
    path = tmp_path / "weak.yaml"
    path.write_text(weakened)
    result = subprocess.run(
        [str(CFN_LINT), "--append-rules", str(RULES), "--template", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode != 0
    for message in (
        "E9001 Database: DeletionProtection must be true",
        "E9001 Database: BackupRetentionPeriod must be at least 7 days",
        "E9001 Database: MultiAZ must be true",
        "E9001 Database: DeletionPolicy must be Snapshot",
        "E9002 GatewayService: MinimumHealthyPercent must be 100",
    ):
        assert message in result.stdout
