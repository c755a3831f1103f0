"""cfn-lint rules for the Weelo stack (deploy/ecs/stack.yaml), loaded with
`cfn-lint --append-rules deploy/cfn-rules`. Each finding is an error, so a template that drops
one of these settings fails `scripts/lint-deploy.sh`.
"""

from __future__ import annotations

from typing import Any

from cfnlint.rules import CloudFormationLintRule, RuleMatch
from cfnlint.template import Template


def _is_true(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


def _at_least(value: Any, minimum: int) -> bool:
    try:
        return int(value) >= minimum
    except (TypeError, ValueError):
        return False


def _check(
    rule: CloudFormationLintRule,
    cfn: Template,
    resource_type: str,
    checks: list[tuple[tuple[str, ...], Any, str]],
) -> list[RuleMatch]:
    """Each (path under the resource, predicate, message) that fails becomes a match."""
    matches = []
    for name, resource in cfn.get_resources([resource_type]).items():
        for path, predicate, message in checks:
            value: Any = resource
            for part in path:
                value = value.get(part) if isinstance(value, dict) else None
            if not predicate(value):
                matches.append(RuleMatch(["Resources", name, *path], f"{name}: {message}"))
    return matches


class RdsInstanceHardening(CloudFormationLintRule):
    id = "E9001"
    shortdesc = "Weelo: RDS PostgreSQL is protected"
    description = (
        "Deletion protection, 7-day backups, Multi-AZ, a managed master password, encrypted "
        "storage, no public access and a snapshot when the resource is deleted or replaced"
    )
    source_url = "https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/CHAP_BestPractices.html"
    tags = ["resources", "rds", "weelo"]

    CHECKS: list[tuple[tuple[str, ...], Any, str]] = [
        (("Properties", "DeletionProtection"), _is_true, "DeletionProtection must be true"),
        (
            ("Properties", "BackupRetentionPeriod"),
            lambda v: _at_least(v, 7),
            "BackupRetentionPeriod must be at least 7 days",
        ),
        (("Properties", "MultiAZ"), _is_true, "MultiAZ must be true"),
        (
            ("Properties", "ManageMasterUserPassword"),
            _is_true,
            "ManageMasterUserPassword must be true (RDS keeps the password in Secrets Manager)",
        ),
        (
            ("Properties", "MasterUserPassword"),
            lambda v: v is None,
            "MasterUserPassword must not be set",
        ),
        (("Properties", "StorageEncrypted"), _is_true, "StorageEncrypted must be true"),
        (
            ("Properties", "PubliclyAccessible"),
            lambda v: v is False or v == "false",
            "PubliclyAccessible must be false",
        ),
        (("DeletionPolicy",), lambda v: v == "Snapshot", "DeletionPolicy must be Snapshot"),
        (
            ("UpdateReplacePolicy",),
            lambda v: v == "Snapshot",
            "UpdateReplacePolicy must be Snapshot",
        ),
    ]

    def match(self, cfn: Template) -> list[RuleMatch]:
        return _check(self, cfn, "AWS::RDS::DBInstance", self.CHECKS)


class EcsServiceSafeDeployments(CloudFormationLintRule):
    id = "E9002"
    shortdesc = "Weelo: ECS services roll back failed deployments"
    description = "Deployment circuit breaker with rollback, and minimum healthy percent 100"
    source_url = "https://docs.aws.amazon.com/AmazonECS/latest/developerguide/deployment-circuit-breaker.html"
    tags = ["resources", "ecs", "weelo"]

    CHECKS: list[tuple[tuple[str, ...], Any, str]] = [
        (
            ("Properties", "DeploymentConfiguration", "DeploymentCircuitBreaker", "Enable"),
            _is_true,
            "the deployment circuit breaker must be enabled",
        ),
        (
            ("Properties", "DeploymentConfiguration", "DeploymentCircuitBreaker", "Rollback"),
            _is_true,
            "the deployment circuit breaker must roll back",
        ),
        (
            ("Properties", "DeploymentConfiguration", "MinimumHealthyPercent"),
            lambda v: _at_least(v, 100),
            "MinimumHealthyPercent must be 100",
        ),
    ]

    def match(self, cfn: Template) -> list[RuleMatch]:
        return _check(self, cfn, "AWS::ECS::Service", self.CHECKS)


class RedisEncryptedAndReplicated(CloudFormationLintRule):
    id = "E9003"
    shortdesc = "Weelo: ElastiCache Redis is encrypted and fails over"
    description = "Encryption in transit and at rest, automatic failover across AZs"
    source_url = "https://docs.aws.amazon.com/AmazonElastiCache/latest/dg/encryption.html"
    tags = ["resources", "elasticache", "weelo"]

    CHECKS: list[tuple[tuple[str, ...], Any, str]] = [
        (
            ("Properties", "TransitEncryptionEnabled"),
            _is_true,
            "TransitEncryptionEnabled must be true",
        ),
        (
            ("Properties", "AtRestEncryptionEnabled"),
            _is_true,
            "AtRestEncryptionEnabled must be true",
        ),
        (
            ("Properties", "AutomaticFailoverEnabled"),
            _is_true,
            "AutomaticFailoverEnabled must be true",
        ),
        (("Properties", "MultiAZEnabled"), _is_true, "MultiAZEnabled must be true"),
    ]

    def match(self, cfn: Template) -> list[RuleMatch]:
        return _check(self, cfn, "AWS::ElastiCache::ReplicationGroup", self.CHECKS)
