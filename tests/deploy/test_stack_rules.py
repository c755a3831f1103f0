"""The Weelo cfn-lint rules of issue 13 (deploy/cfn-rules/WeeloHardening.py, E9004-E9009): undoing
any of the stack's operations points makes `cfn-lint --append-rules deploy/cfn-rules`, so
`make lint`, fail with that rule's message."""

from __future__ import annotations

import copy
import importlib.util
import json
import types
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.stack_template import RULES, load_template, run_cfn_lint

SUB = "token.actions.githubusercontent.com:sub"


def weaken(template: dict[str, Any]) -> dict[str, Any]:
    """The stack with one point of each rule undone."""
    weak = copy.deepcopy(template)
    res = weak["Resources"]
    del res["GatewayService"]["Properties"]["EnableExecuteCommand"]
    broadcast = res["BroadcastService"]["Properties"]["DeploymentConfiguration"]["Alarms"]
    broadcast["AlarmNames"] = [{"Ref": "GatewayErrorRateAlarm"}]
    res["AcceptanceService"]["Properties"]["DeploymentConfiguration"]["Alarms"]["Rollback"] = False
    res["TimerService"]["Properties"]["DesiredCount"] = {"Ref": "DesiredCount"}
    del res["HttpMetricsBlocked"]
    (trust,) = res["DeployRole"]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    trust["Condition"]["StringEquals"][SUB] = {
        "Fn::Sub": "repo:${GitHubRepository}:environment:${GitHubEnvironment}"
    }
    res["Repository"]["Properties"]["RepositoryName"] = "weelo"
    res["Cluster"]["Properties"]["ClusterName"] = "weelo"
    (policy,) = res["BroadcastTaskRole"]["Properties"]["Policies"]
    policy["PolicyDocument"]["Statement"][0]["Resource"] = {"Ref": "JwtSecret"}
    (execution,) = res["TaskExecutionRole"]["Properties"]["Policies"]
    execution["PolicyDocument"]["Statement"].append(
        {
            "Effect": "Allow",
            "Action": "secretsmanager:GetSecretValue",
            "Resource": {"Ref": "JwtSecret"},
        }
    )
    return weak


@pytest.mark.process
def test_each_rule_catches_its_point_undone(tmp_path: Path) -> None:
    """With Exec off, a deployment alarm missing or not rolling back, DesiredCount on an
    autoscaled service, /metrics open on a listener, the OIDC subject without the branch, fixed
    names, and a non-gateway role reading the JWT secret, cfn-lint fails naming each."""
    path = tmp_path / "weak.json"
    path.write_text(json.dumps(weaken(load_template())))
    result = run_cfn_lint(path)
    assert result.returncode != 0
    for message in (
        "E9004 GatewayService: EnableExecuteCommand must be true (ECS Exec)",
        "E9004 BroadcastService: deployment alarms must name the gateway's 5xx and latency alarms",
        "E9004 AcceptanceService: deployment alarms must roll back",
        "E9005 TimerService: autoscaled, so DesiredCount must not be set",
        "E9006 HttpListener: needs a fixed 404 for /metrics and /metrics/*",
        "E9007 DeployRole: the OIDC subject must be one exact ...:ref:refs/heads/main",
        "E9008 Repository: RepositoryName must include ${Environment}",
        "E9008 Repository: retained, so RepositoryName must include the stack's id",
        "E9008 Cluster: ClusterName must include ${Environment}",
        "E9009 BroadcastTaskRole: may not read the JWT secret (only GatewayTaskRole)",
        "E9009 TaskExecutionRole: may not read the JWT secret (only GatewayTaskRole)",
    ):
        assert message in result.stdout, message
    for untouched in ("HttpsListener", "GatewayTaskRole", "JwtRotationFunctionRole", "AppSecret"):
        assert f" {untouched}: " not in result.stdout, untouched


@pytest.fixture(scope="module")
def rules() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("weelo_rules", RULES / "WeeloHardening.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("condition", "pinned"),
    [
        ({"StringEquals": {SUB: "repo:o/r:environment:production:ref:refs/heads/main"}}, True),
        ({"StringEquals": {SUB: {"Fn::Sub": "repo:${R}:ref:refs/heads/main"}}}, True),
        ({"StringEquals": {SUB: "repo:o/r:environment:production"}}, False),
        ({"StringLike": {SUB: "repo:o/r:ref:refs/heads/main"}}, False),
        ({"StringEquals": {SUB: "repo:o/r:ref:refs/heads/*"}}, False),
        (
            {
                "StringEquals": {SUB: "repo:o/r:ref:refs/heads/main"},
                "StringLike": {SUB: "repo:o/r:*"},
            },
            False,
        ),
        ({"StringEquals": {SUB: ["repo:o/r:ref:refs/heads/main", "repo:o/r:pull_request"]}}, False),
        ({}, False),
    ],
)
def test_the_oidc_rule_accepts_only_an_exact_main_subject(
    rules: types.ModuleType, condition: dict[str, Any], pinned: bool
) -> None:
    """E9007's test of a trust condition: exactly one subject condition, StringEquals, every
    value ending in :ref:refs/heads/main without a wildcard."""
    assert rules.OidcTrustPinsMain._subject_pinned(condition) is pinned
