"""deploy/ecs/stack.yaml: the properties production depends on are present, and cfn-lint agrees."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from libs.cli import SERVICES
from libs.runtime.redis_client import is_cluster_url
from libs.runtime.settings import load_settings
from libs.runtime.tokens import REFRESH_TTL_S
from tests.deploy.conftest import ROOT
from tests.deploy.stack_template import (
    STACK,
    evaluate,
    load_template,
    resources_of,
    run_cfn_lint,
    stack_names,
)


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


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
    production, staging = stack_names("production", "u"), stack_names("staging", "u")
    for service in services:
        props = service["Properties"]
        config = props["DeploymentConfiguration"]
        assert config["DeploymentCircuitBreaker"] == {"Enable": True, "Rollback": True}
        assert config["MinimumHealthyPercent"] == 100
        name = props["ServiceName"]
        # the family's latest revision: production's families as before, staging's its own
        assert evaluate(props["TaskDefinition"], production) == name
        assert evaluate(props["TaskDefinition"], staging) == f"weelo-staging-{name[6:]}"
        task_definition = ROOT / "deploy/ecs/task-definitions" / f"{name[6:]}.json"
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


def test_redis_has_a_cluster_mode_option(template: dict[str, Any]) -> None:
    """`RedisShards` 0 (the default) keeps one primary and a replica, cluster mode off; above 0
    the replication group has that many shards of `RedisReplicasPerShard` replicas each, in a
    parameter group with cluster-enabled; the REDIS_URL form the stack outputs then names the
    configuration endpoint with the scheme the services take for a cluster (`rediss+cluster`)."""
    assert template["Parameters"]["RedisShards"]["Default"] == 0
    assert template["Parameters"]["RedisReplicasPerShard"]["MinValue"] >= 1
    assert template["Conditions"]["RedisClusterMode"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "RedisShards"}, 0]}]
    }
    endpoints = {
        f"Redis.{kind}EndPoint.{part}": value
        for kind, host in (("Primary", "primary.example"), ("Configuration", "config.example"))
        for part, value in (("Address", host), ("Port", "6379"))
    }
    base = {**stack_names("production", "0-1-2-3-4"), **endpoints}
    base["RedisClusterParameterGroup"] = "weelo-redis-cluster"
    off = {**base, "RedisClusterMode": "false", "RedisShards": "0", "RedisReplicasPerShard": "1"}
    on = {**base, "RedisClusterMode": "true", "RedisShards": "3", "RedisReplicasPerShard": "2"}
    props = template["Resources"]["Redis"]["Properties"]
    chosen = {
        name: (evaluate(props[name], off), evaluate(props[name], on))
        for name in (
            "NumCacheClusters",
            "NumNodeGroups",
            "ReplicasPerNodeGroup",
            "CacheParameterGroupName",
        )
    }
    assert chosen == {
        "NumCacheClusters": (2, None),
        "NumNodeGroups": (None, "3"),
        "ReplicasPerNodeGroup": (None, "2"),
        "CacheParameterGroupName": (None, "weelo-redis-cluster"),
    }
    group = template["Resources"]["RedisClusterParameterGroup"]
    assert group["Condition"] == "RedisClusterMode"
    assert group["Properties"]["CacheParameterGroupFamily"] == "redis7"
    assert group["Properties"]["Properties"] == {"cluster-enabled": "yes"}
    url_form = template["Outputs"]["RedisUrlForm"]["Value"]
    assert evaluate(url_form, on) == "rediss+cluster://:TOKEN@config.example:6379/0"
    assert evaluate(url_form, off) == "rediss://:TOKEN@primary.example:6379/0"
    assert is_cluster_url(evaluate(url_form, on))
    assert not is_cluster_url(evaluate(url_form, off))


def test_jwt_secret_rotates_no_faster_than_refresh_tokens_live(
    template: dict[str, Any],
) -> None:
    """The JWT secret (not the app secret) rotates through the stack's Lambda, at most once per
    refresh-token life; its first keys are generated, never written in the template."""
    (schedule,) = resources_of(template, "AWS::SecretsManager::RotationSchedule").values()
    props = schedule["Properties"]
    assert props["SecretId"] == {"Ref": "JwtSecret"}
    assert props["RotationLambdaARN"] == {"Fn::GetAtt": ["JwtRotationFunction", "Arn"]}
    assert props["RotationRules"]["AutomaticallyAfterDays"] == {"Ref": "JwtRotationDays"}
    assert template["Parameters"]["JwtRotationDays"]["MinValue"] * 86400 >= REFRESH_TTL_S
    jwt = template["Resources"]["JwtSecret"]["Properties"]
    assert "SecretString" not in jwt
    assert jwt["GenerateSecretString"]["GenerateStringKey"] == "JWT_SECRET"
    (lambda_statement,) = template["Resources"]["JwtRotationFunctionRole"]["Properties"][
        "Policies"
    ][0]["PolicyDocument"]["Statement"]
    assert lambda_statement["Resource"] == {"Ref": "JwtSecret"}


def test_app_secret_holds_no_jwt_key(template: dict[str, Any]) -> None:
    """The app secret (every service but the gateway reads it) starts as an empty JSON object
    an operator fills with DATABASE_URL, REDIS_URL and FCM_SERVER_KEY: no JWT key is made in it."""
    props = template["Resources"]["AppSecret"]["Properties"]
    assert props["SecretString"] == "{}"
    assert "GenerateSecretString" not in props


def test_deploy_role_trusts_only_main_in_this_repository_environment(
    template: dict[str, Any],
) -> None:
    """GitHub OIDC: audience sts.amazonaws.com, one repository's deploy environment, and only its
    main branch (the subject claim customised to include the ref), matched exactly."""
    provider = template["Resources"]["GitHubOidcProvider"]["Properties"]
    assert provider["Url"] == "https://token.actions.githubusercontent.com"
    assert provider["ClientIdList"] == ["sts.amazonaws.com"]
    (trust,) = template["Resources"]["DeployRole"]["Properties"]["AssumeRolePolicyDocument"][
        "Statement"
    ]
    assert trust["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert set(trust["Condition"]) == {"StringEquals"}  # no StringLike: no wildcard subject
    condition = trust["Condition"]["StringEquals"]
    assert condition["token.actions.githubusercontent.com:aud"] == "sts.amazonaws.com"
    assert condition["token.actions.githubusercontent.com:sub"] == {
        "Fn::Sub": "repo:${GitHubRepository}:environment:${GitHubEnvironment}:ref:refs/heads/main"
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


def test_cfn_lint_passes_with_the_weelo_rules() -> None:
    """cfn-lint, with the Weelo rules in deploy/cfn-rules, finds nothing in the stack."""
    result = run_cfn_lint(STACK)
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
    result = run_cfn_lint(path)
    assert result.returncode != 0
    for message in (
        "E9001 Database: DeletionProtection must be true",
        "E9001 Database: BackupRetentionPeriod must be at least 7 days",
        "E9001 Database: MultiAZ must be true",
        "E9001 Database: DeletionPolicy must be Snapshot",
        "E9002 GatewayService: MinimumHealthyPercent must be 100",
    ):
        assert message in result.stdout
