"""cfn-lint rules for the Weelo stack (deploy/ecs/stack.yaml), loaded with
`cfn-lint --append-rules deploy/cfn-rules`. Each finding is an error, so a template that drops
one of these settings fails `scripts/lint-deploy.sh`.

E9001-E9003 guard the data stores and deployments; E9004-E9009 the operations of issue 13:
deployments roll back on the gateway's alarms and services can be entered (ECS Exec), scaled
services keep the count autoscaling chose, `/metrics` never leaves the VPC, only main deploys,
names leave room for another environment and a re-created stack, and only the gateway (and the
rotation) may read the JWT keys.
"""

from __future__ import annotations

from collections.abc import Iterator
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


# ------------------------------------------------------------------ helpers for E9004-E9009


def _refs(value: Any) -> set[str]:
    """Every logical id `value` points at: Ref, Fn::GetAtt, ${Name} and ${Name.Attr} in Fn::Sub."""
    found: set[str] = set()
    if isinstance(value, dict):
        for key, inner in value.items():
            if key == "Ref" and isinstance(inner, str):
                found.add(inner)
            elif key == "Fn::GetAtt":
                found.add(inner.split(".")[0] if isinstance(inner, str) else str(inner[0]))
            elif key == "Fn::Sub":
                text = inner if isinstance(inner, str) else inner[0]
                found |= {name.split(".")[0] for name in _sub_names(str(text))}
                found |= _refs(inner)
            else:
                found |= _refs(inner)
    elif isinstance(value, list):
        for inner in value:
            found |= _refs(inner)
    return found


def _sub_names(text: str) -> Iterator[str]:
    start = text.find("${")
    while start != -1:
        end = text.find("}", start)
        if end == -1:
            return
        if not text.startswith("${!", start):
            yield text[start + 2 : end]
        start = text.find("${", end)


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _statements(resource: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The Allow statements of a role's inline policies or of a managed policy."""
    props = resource.get("Properties", {})
    documents = [p.get("PolicyDocument", {}) for p in props.get("Policies", []) or []]
    if "PolicyDocument" in props:
        documents.append(props["PolicyDocument"])
    for document in documents:
        for statement in _as_list(document.get("Statement", [])):
            if isinstance(statement, dict) and statement.get("Effect") == "Allow":
                yield statement


def _alarms_on(cfn: Template, metric: str) -> set[str]:
    """Alarms that watch `metric`, directly or in their metric math."""
    return {
        name
        for name, alarm in cfn.get_resources(["AWS::CloudWatch::Alarm"]).items()
        if f"'{metric}'" in repr(alarm.get("Properties", {}))
    }


class EcsServiceOperable(CloudFormationLintRule):
    id = "E9004"
    shortdesc = "Weelo: ECS services roll back on the gateway's alarms and allow ECS Exec"
    description = (
        "Every ECS service enables ECS Exec and deployment alarms with rollback naming an alarm "
        "on the gateway's 5xx responses and one on its response time"
    )
    source_url = (
        "https://docs.aws.amazon.com/AmazonECS/latest/developerguide/deployment-alarm-failure.html"
    )
    tags = ["resources", "ecs", "weelo"]

    def match(self, cfn: Template) -> list[RuleMatch]:
        errors, latency = (
            _alarms_on(cfn, "HTTPCode_Target_5XX_Count"),
            _alarms_on(cfn, "TargetResponseTime"),
        )
        matches = _check(
            self,
            cfn,
            "AWS::ECS::Service",
            [
                (
                    ("Properties", "EnableExecuteCommand"),
                    _is_true,
                    "EnableExecuteCommand must be true (ECS Exec)",
                ),
                (
                    ("Properties", "DeploymentConfiguration", "Alarms", "Enable"),
                    _is_true,
                    "deployment alarms must be enabled",
                ),
                (
                    ("Properties", "DeploymentConfiguration", "Alarms", "Rollback"),
                    _is_true,
                    "deployment alarms must roll back",
                ),
            ],
        )
        for name, service in cfn.get_resources(["AWS::ECS::Service"]).items():
            config = service.get("Properties", {}).get("DeploymentConfiguration", {})
            named = _refs((config.get("Alarms") or {}).get("AlarmNames", []))
            if not (named & errors and named & latency):
                path = ["Resources", name, "Properties", "DeploymentConfiguration", "Alarms"]
                message = (
                    f"{name}: deployment alarms must name the gateway's 5xx and latency alarms"
                )
                matches.append(RuleMatch(path, message))
        return matches


class AutoscaledCountKept(CloudFormationLintRule):
    id = "E9005"
    shortdesc = "Weelo: a stack update keeps the task count autoscaling chose"
    description = "An ECS service with an Application Auto Scaling target sets no DesiredCount"
    source_url = (
        "https://docs.aws.amazon.com/AmazonECS/latest/developerguide/service-auto-scaling.html"
    )
    tags = ["resources", "ecs", "autoscaling", "weelo"]

    def match(self, cfn: Template) -> list[RuleMatch]:
        services = cfn.get_resources(["AWS::ECS::Service"])
        matches = []
        targets = cfn.get_resources(["AWS::ApplicationAutoScaling::ScalableTarget"])
        for target in targets.values():
            props = target.get("Properties", {})
            if props.get("ScalableDimension") != "ecs:service:DesiredCount":
                continue
            for name in _refs(props.get("ResourceId")) & set(services):
                if "DesiredCount" in services[name].get("Properties", {}):
                    path = ["Resources", name, "Properties", "DesiredCount"]
                    message = f"{name}: autoscaled, so DesiredCount must not be set"
                    matches.append(RuleMatch(path, message))
        return matches


class MetricsNotPublic(CloudFormationLintRule):
    id = "E9006"
    shortdesc = "Weelo: the load balancer answers /metrics itself"
    description = "Every listener has a rule answering /metrics and /metrics/* with a fixed 404"
    source_url = (
        "https://docs.aws.amazon.com/elasticloadbalancing/latest/application/listener-rules.html"
    )
    tags = ["resources", "elb", "weelo"]

    @staticmethod
    def _blocks_metrics(rule: dict[str, Any]) -> bool:
        props = rule.get("Properties", {})
        paths = {
            str(value)
            for condition in props.get("Conditions", [])
            if condition.get("Field") == "path-pattern"
            for value in (condition.get("PathPatternConfig") or {}).get("Values", [])
        }
        answers_404 = any(
            action.get("Type") == "fixed-response"
            and str((action.get("FixedResponseConfig") or {}).get("StatusCode")) == "404"
            for action in props.get("Actions", [])
        )
        return {"/metrics", "/metrics/*"} <= paths and answers_404

    def match(self, cfn: Template) -> list[RuleMatch]:
        blocked = {
            listener
            for rule in cfn.get_resources(["AWS::ElasticLoadBalancingV2::ListenerRule"]).values()
            if self._blocks_metrics(rule)
            for listener in _refs(rule.get("Properties", {}).get("ListenerArn"))
        }
        return [
            RuleMatch(["Resources", name], f"{name}: needs a fixed 404 for /metrics and /metrics/*")
            for name in cfn.get_resources(["AWS::ElasticLoadBalancingV2::Listener"])
            if name not in blocked
        ]


class OidcTrustPinsMain(CloudFormationLintRule):
    id = "E9007"
    shortdesc = "Weelo: only the main branch may assume a role through OIDC"
    description = (
        "A web-identity trust matches its subject exactly (StringEquals, no wildcard) and the "
        "subject names ref:refs/heads/main"
    )
    source_url = "https://docs.github.com/en/actions/security-for-github-actions/security-hardening-your-deployments/about-security-hardening-with-openid-connect"
    tags = ["resources", "iam", "weelo"]

    @staticmethod
    def _subject_pinned(condition: dict[str, Any]) -> bool:
        subjects = [
            value
            for operator, pairs in condition.items()
            for key, value in (pairs or {}).items()
            if key.endswith(":sub")
        ]
        exact = (condition.get("StringEquals") or {}).get("token.actions.githubusercontent.com:sub")
        texts = [str(s.get("Fn::Sub") if isinstance(s, dict) else s) for s in _as_list(exact)]
        return (
            exact is not None
            and len(subjects) == 1
            and all(t.endswith(":ref:refs/heads/main") and "*" not in t for t in texts)
        )

    def match(self, cfn: Template) -> list[RuleMatch]:
        matches = []
        for name, role in cfn.get_resources(["AWS::IAM::Role"]).items():
            trust = role.get("Properties", {}).get("AssumeRolePolicyDocument", {})
            for statement in _as_list(trust.get("Statement", [])):
                if "sts:AssumeRoleWithWebIdentity" not in _as_list(statement.get("Action")):
                    continue
                if not self._subject_pinned(statement.get("Condition") or {}):
                    path = ["Resources", name, "Properties", "AssumeRolePolicyDocument"]
                    message = f"{name}: the OIDC subject must be one exact ...:ref:refs/heads/main"
                    matches.append(RuleMatch(path, message))
        return matches


NAME_PROPERTIES = {
    "AWS::SecretsManager::Secret": "Name",
    "AWS::ECR::Repository": "RepositoryName",
    "AWS::Logs::LogGroup": "LogGroupName",
    "AWS::ECS::Cluster": "ClusterName",
    "AWS::CloudWatch::Alarm": "AlarmName",
    "AWS::SNS::Topic": "TopicName",
}


class NamesLeaveRoom(CloudFormationLintRule):
    id = "E9008"
    shortdesc = "Weelo: physical names follow the environment and the stack"
    description = (
        "A physical name includes the Environment parameter; the name of a resource kept after "
        "the stack is deleted (DeletionPolicy Retain) also includes the stack's id"
    )
    source_url = (
        "https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/aws-properties-name.html"
    )
    tags = ["resources", "weelo"]

    def match(self, cfn: Template) -> list[RuleMatch]:
        matches = []
        for kind, prop in NAME_PROPERTIES.items():
            for name, resource in cfn.get_resources([kind]).items():
                value = resource.get("Properties", {}).get(prop)
                if value is None:
                    continue
                path = ["Resources", name, "Properties", prop]
                if "Environment" not in _refs(value) and "AWS::StackName" not in _refs(value):
                    matches.append(RuleMatch(path, f"{name}: {prop} must include ${{Environment}}"))
                if resource.get("DeletionPolicy") == "Retain" and "AWS::StackId" not in repr(value):
                    message = f"{name}: retained, so {prop} must include the stack's id"
                    matches.append(RuleMatch(path, message))
        return matches


class JwtKeysForTheGatewayOnly(CloudFormationLintRule):
    id = "E9009"
    shortdesc = "Weelo: only the gateway's task role and the rotation read the JWT secret"
    description = (
        "The secret the rotation schedule rotates (the JWT keys) appears in no IAM policy but "
        "those of GatewayTaskRole and of the rotation function's role"
    )
    source_url = "https://docs.aws.amazon.com/secretsmanager/latest/userguide/auth-and-access.html"
    tags = ["resources", "iam", "secretsmanager", "weelo"]

    def match(self, cfn: Template) -> list[RuleMatch]:
        schedules = cfn.get_resources(["AWS::SecretsManager::RotationSchedule"]).values()
        functions = cfn.get_resources(["AWS::Lambda::Function"])
        jwt: set[str] = set()
        allowed = {"GatewayTaskRole"}
        for schedule in schedules:
            props = schedule.get("Properties", {})
            jwt |= _refs(props.get("SecretId"))
            for function in _refs(props.get("RotationLambdaARN")) & set(functions):
                allowed |= _refs(functions[function].get("Properties", {}).get("Role"))
        matches = []
        kinds = ["AWS::IAM::Role", "AWS::IAM::ManagedPolicy", "AWS::IAM::Policy"]
        for name, resource in cfn.get_resources(kinds).items():
            if name in allowed:
                continue
            for statement in _statements(resource):
                if _refs(statement.get("Resource")) & jwt:
                    message = f"{name}: may not read the JWT secret (only GatewayTaskRole)"
                    matches.append(RuleMatch(["Resources", name], message))
        return matches
