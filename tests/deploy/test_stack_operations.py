"""deploy/ecs/stack.yaml, issue 13: alarms and alarm-based rollback, /metrics kept inside,
autoscaling that a stack update leaves alone, one task role per service, ECS Exec, and names
that leave room for another environment. Each test reads the stack as CloudFormation would."""

from __future__ import annotations

import importlib
import json
import re
from typing import Any

import prometheus_client
import pytest
import yaml

from libs.cli import SERVICES
from libs.events.commands import commands_stream
from libs.events.streams import events_stream
from tests.deploy.conftest import ROOT
from tests.deploy.stack_template import (
    actions_on,
    all_actions,
    allow_statements,
    as_list,
    evaluate,
    load_template,
    refs,
    resources_of,
    stack_names,
)

WORKERS = ("broadcast", "acceptance", "timer", "presence")
TASK_ROLES = {name: f"{name.capitalize()}TaskRole" for name in (*SERVICES, "migrate", "ops")}
EXEC_ACTIONS = {
    "ssmmessages:CreateControlChannel",
    "ssmmessages:CreateDataChannel",
    "ssmmessages:OpenControlChannel",
    "ssmmessages:OpenDataChannel",
}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


def alarms(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v["Properties"] for k, v in resources_of(template, "AWS::CloudWatch::Alarm").items()}


def watched(alarm: dict[str, Any]) -> list[dict[str, Any]]:
    """The metrics an alarm reads: {Namespace, MetricName, Dimensions as a dict}."""
    metrics = [q["MetricStat"]["Metric"] for q in alarm.get("Metrics", []) if "MetricStat" in q]
    if "MetricName" in alarm:
        metrics.append(alarm)
    return [_metric(m) for m in metrics]


def _metric(m: dict[str, Any]) -> dict[str, Any]:
    return {
        "Namespace": m["Namespace"],
        "MetricName": m["MetricName"],
        "Dimensions": {d["Name"]: d["Value"] for d in m.get("Dimensions", [])},
    }


def scaling_metrics(template: dict[str, Any]) -> list[dict[str, Any]]:
    """The metrics the target tracking policies with a customised metric read."""
    found = []
    for policy in resources_of(template, "AWS::ApplicationAutoScaling::ScalingPolicy").values():
        config = policy["Properties"]["TargetTrackingScalingPolicyConfiguration"]
        spec = config.get("CustomizedMetricSpecification", {})
        if "MetricName" in spec:
            found.append(_metric(spec))
        found += [
            _metric(q["MetricStat"]["Metric"]) for q in spec.get("Metrics", []) if "MetricStat" in q
        ]
    return found


def alarms_on(template: dict[str, Any], namespace: str, metric: str) -> list[dict[str, Any]]:
    return [
        alarm
        for alarm in alarms(template).values()
        if any(m["Namespace"] == namespace and m["MetricName"] == metric for m in watched(alarm))
    ]


def service_of(template: dict[str, Any], name: str) -> dict[str, Any]:
    (service,) = (
        s["Properties"]
        for s in resources_of(template, "AWS::ECS::Service").values()
        if s["Properties"]["ServiceName"] == f"weelo-{name}"
    )
    return service


# ------------------------------------------------------------------ 5. alarms


@pytest.mark.parametrize(
    ("namespace", "metric"),
    [
        ("AWS/ApplicationELB", "HTTPCode_Target_5XX_Count"),
        ("AWS/ApplicationELB", "TargetResponseTime"),
        ("AWS/ApplicationELB", "UnHealthyHostCount"),
        ("AWS/RDS", "CPUUtilization"),
        ("AWS/RDS", "FreeStorageSpace"),
        ("AWS/RDS", "DatabaseConnections"),
        ("AWS/RDS", "ReplicaLag"),
        ("AWS/ElastiCache", "DatabaseMemoryUsagePercentage"),
        ("AWS/ElastiCache", "Evictions"),
        ("AWS/Lambda", "Errors"),
        ("Weelo", "weelo_expiry_lateness_seconds"),
        ("Weelo", "weelo_outbox_oldest_age_seconds"),
        ("Weelo", "weelo_stream_lag_entries"),
        ("Weelo", "weelo_dead_letters_total"),
    ],
)
def test_each_figure_has_an_alarm_that_notifies(
    template: dict[str, Any], namespace: str, metric: str
) -> None:
    """The figure an SRE expects alarmed has an alarm, and the alarm tells the SNS topic."""
    found = alarms_on(template, namespace, metric)
    assert found, f"no alarm on {namespace} {metric}"
    for alarm in found:
        assert alarm["AlarmActions"] == [{"Ref": "AlarmTopic"}]
        assert alarm["OKActions"] == [{"Ref": "AlarmTopic"}]


def test_the_latency_alarm_is_on_the_p99(template: dict[str, Any]) -> None:
    """The gateway's latency alarm reads the 99th percentile, not an average."""
    (alarm,) = alarms_on(template, "AWS/ApplicationELB", "TargetResponseTime")
    assert alarm["ExtendedStatistic"] == "p99"


def test_the_rotation_alarm_watches_the_rotation_function(template: dict[str, Any]) -> None:
    """The Lambda errors alarm is on the JWT rotation function itself."""
    (alarm,) = alarms_on(template, "AWS/Lambda", "Errors")
    assert watched(alarm)[0]["Dimensions"] == {"FunctionName": {"Ref": "JwtRotationFunction"}}


def test_every_service_has_a_running_below_desired_alarm(template: dict[str, Any]) -> None:
    """Each ECS service has an alarm comparing its running tasks with the desired count."""
    covered = set()
    for alarm in alarms(template).values():
        names = {m["MetricName"] for m in watched(alarm)}
        if names == {"RunningTaskCount", "DesiredTaskCount"}:
            (service,) = {m["Dimensions"]["ServiceName"] for m in watched(alarm)}
            covered.add(service)
            assert alarm["AlarmActions"] == [{"Ref": "AlarmTopic"}]
    assert covered == {f"weelo-{name}" for name in SERVICES}


def test_the_redis_alarms_watch_both_nodes(template: dict[str, Any]) -> None:
    """Memory and evictions are read on both nodes of the replication group (either may be the
    primary after a failover); in cluster mode (`RedisShards` above 0) on the first shard's."""
    for metric in ("DatabaseMemoryUsagePercentage", "Evictions"):
        (alarm,) = alarms_on(template, "AWS/ElastiCache", metric)
        for cluster, expected in (
            ("false", {"r-001", "r-002"}),
            ("true", {"r-0001-001", "r-0001-002"}),
        ):
            names = {"Redis": "r", "RedisClusterMode": cluster}
            nodes = {evaluate(m["Dimensions"]["CacheClusterId"], names) for m in watched(alarm)}
            assert nodes == expected


def test_the_connections_alarm_is_80_percent_of_max_connections(template: dict[str, Any]) -> None:
    """Every allowed instance class's connections alarm is 80 % of the max_connections the
    parameter group sets for it."""
    (alarm,) = alarms_on(template, "AWS/RDS", "DatabaseConnections")
    assert alarm["Threshold"] == {
        "Fn::FindInMap": ["DatabaseClass", {"Ref": "DatabaseInstanceClass"}, "ConnectionsAlarm"]
    }
    classes = template["Mappings"]["DatabaseClass"]
    assert set(classes) == set(template["Parameters"]["DatabaseInstanceClass"]["AllowedValues"])
    for figures in classes.values():
        assert int(figures["ConnectionsAlarm"]) == int(figures["MaxConnections"]) * 8 // 10


def test_service_alarms_use_metric_names_the_code_exports(template: dict[str, Any]) -> None:
    """Every Weelo-namespace metric the stack reads (alarms and scaling) is one the services
    really export on /metrics, under that name."""
    for module in ("libs.events.metrics", "services.gateway.realtime.hub"):
        importlib.import_module(module)
    exposition = prometheus_client.generate_latest(prometheus_client.REGISTRY).decode()
    exported = {line.split()[2] for line in exposition.splitlines() if line.startswith("# TYPE")}
    exported |= {f"{name}_total" for name in exported}  # a counter's samples end in _total
    metrics = [m for a in alarms(template).values() for m in watched(a)] + scaling_metrics(template)
    read = {m["MetricName"] for m in metrics if m["Namespace"] == "Weelo"}
    assert len(read) >= 5, read
    assert read <= exported


def test_service_alarms_use_dimension_sets_the_collector_sends(template: dict[str, Any]) -> None:
    """The collector (deploy/ecs/collector.yaml) writes namespace Weelo and, for each metric the
    stack reads there, the very dimension set the alarm or policy names; CloudWatch matches
    dimensions exactly, so any other set would be a metric that never has data."""
    config = yaml.safe_load((ROOT / "deploy/ecs/collector.yaml").read_text())
    emf = config["exporters"]["awsemf"]
    assert emf["namespace"] == "Weelo"
    declared = emf["metric_declarations"]
    metrics = [m for a in alarms(template).values() for m in watched(a)] + scaling_metrics(template)
    for metric in (m for m in metrics if m["Namespace"] == "Weelo"):
        sets = [
            sorted(dims)
            for declaration in declared
            if any(re.search(p, metric["MetricName"]) for p in declaration["metric_name_selectors"])
            for dims in declaration["dimensions"]
        ]
        assert sorted(metric["Dimensions"]) in sets, metric


def test_deployments_roll_back_on_the_gateway_alarms(template: dict[str, Any]) -> None:
    """Every ECS service's deployment watches the gateway's 5xx-rate and p99 alarms and rolls
    back when either goes off."""
    (errors,) = (
        k
        for k, a in alarms(template).items()
        if any(m["MetricName"] == "HTTPCode_Target_5XX_Count" for m in watched(a))
    )
    (latency,) = (
        k
        for k, a in alarms(template).items()
        if any(m["MetricName"] == "TargetResponseTime" for m in watched(a))
    )
    for name in SERVICES:
        config = service_of(template, name)["DeploymentConfiguration"]["Alarms"]
        assert config["Enable"] is True and config["Rollback"] is True
        assert refs(config["AlarmNames"]) == {errors, latency}


def test_the_alarm_topic_takes_an_optional_email(template: dict[str, Any]) -> None:
    """An e-mail address given as AlarmEmail is subscribed to the topic; none is needed."""
    assert template["Parameters"]["AlarmEmail"]["Default"] == ""
    subscription = template["Resources"]["AlarmEmailSubscription"]
    assert subscription["Condition"] == "HasAlarmEmail"
    assert subscription["Properties"]["TopicArn"] == {"Ref": "AlarmTopic"}
    assert subscription["Properties"]["Protocol"] == "email"


# ------------------------------------------------------------------ 6. /metrics stays inside


def test_both_listeners_answer_metrics_with_a_fixed_404(template: dict[str, Any]) -> None:
    """The HTTPS and the HTTP listener each have a first rule answering /metrics and
    /metrics/* with a 404 of the gateway's own error body, before anything is forwarded."""
    rules = resources_of(template, "AWS::ElasticLoadBalancingV2::ListenerRule").values()
    blocked = {}
    for rule in rules:
        props = rule["Properties"]
        (condition,) = props["Conditions"]
        (action,) = props["Actions"]
        if condition["PathPatternConfig"]["Values"] == ["/metrics", "/metrics/*"]:
            blocked[refs(props["ListenerArn"]).pop()] = (props["Priority"], action)
    assert set(blocked) == {"HttpsListener", "HttpListener"}
    for priority, action in blocked.values():
        assert priority == 1
        assert action["Type"] == "fixed-response"
        response = action["FixedResponseConfig"]
        assert response["StatusCode"] == "404"
        assert json.loads(response["MessageBody"])["error"]["code"] == "not_found"


def test_tasks_may_put_metrics_only_in_the_weelo_namespace(template: dict[str, Any]) -> None:
    """A service's task role may publish metrics only to namespace Weelo, and its collector may
    write embedded-metric records only into the stack's log group."""
    for name in SERVICES:
        role = TASK_ROLES[name]
        statements = [
            s
            for s in allow_statements(template, role)
            if "cloudwatch:PutMetricData" in as_list(s["Action"])
        ]
        (statement,) = statements
        assert statement["Condition"] == {"StringEquals": {"cloudwatch:namespace": "Weelo"}}
        assert {"logs:PutLogEvents", "logs:CreateLogStream"} <= actions_on(
            template, role, "LogGroup"
        )


# ------------------------------------------------------------------ 7. autoscaling


def policies_of(template: dict[str, Any], target: str) -> list[dict[str, Any]]:
    return [
        p["Properties"]["TargetTrackingScalingPolicyConfiguration"]
        for p in resources_of(template, "AWS::ApplicationAutoScaling::ScalingPolicy").values()
        if p["Properties"]["ScalingTargetId"] == {"Ref": target}
    ]


def scaled_services(template: dict[str, Any]) -> dict[str, str]:
    """service logical id -> scalable target logical id."""
    found = {}
    for name, target in resources_of(
        template, "AWS::ApplicationAutoScaling::ScalableTarget"
    ).items():
        props = target["Properties"]
        assert props["ScalableDimension"] == "ecs:service:DesiredCount"
        assert props["MinCapacity"] == {"Ref": "DesiredCount"}
        (service,) = refs(props["ResourceId"]) - {"Cluster"}
        found[service] = name
    return found


def test_the_gateway_scales_on_requests_cpu_and_open_sockets(template: dict[str, Any]) -> None:
    """The gateway's target tracks requests per target, CPU and its open WebSockets (the
    collector's weelo_gateway_sockets, averaged over its tasks), up to GatewayMaxCount."""
    target = scaled_services(template)["GatewayService"]
    assert template["Resources"][target]["Properties"]["MaxCapacity"] == {"Ref": "GatewayMaxCount"}
    kinds = set()
    for policy in policies_of(template, target):
        if "PredefinedMetricSpecification" in policy:
            kinds.add(policy["PredefinedMetricSpecification"]["PredefinedMetricType"])
        else:
            spec = policy["CustomizedMetricSpecification"]
            assert (spec["Namespace"], spec["Statistic"]) == ("Weelo", "Average")
            kinds.add(spec["MetricName"])
    assert kinds == {
        "ALBRequestCountPerTarget",
        "ECSServiceAverageCPUUtilization",
        "weelo_gateway_sockets",
    }


@pytest.mark.parametrize("name", WORKERS)
def test_a_consumer_service_scales_on_cpu_and_its_own_backlog(
    template: dict[str, Any], name: str
) -> None:
    """Each consumer service tracks CPU and the entries its own consumer group has not read yet
    (that group on that stream, as the code names them) per running task."""
    target = scaled_services(template)[f"{name.capitalize()}Service"]
    assert template["Resources"][target]["Properties"]["MaxCapacity"] == {"Ref": "WorkerMaxCount"}
    task = json.loads((ROOT / f"deploy/ecs/task-definitions/{name}.json").read_text())
    env = {e["name"]: e["value"] for e in task["containerDefinitions"][0]["environment"]}
    prefix = env["REDIS_KEY_PREFIX"]
    stream = (
        events_stream(prefix, "broadcast") if name == "timer" else commands_stream(prefix, name)
    )
    predefined, backlog = set(), None
    for policy in policies_of(template, target):
        if "PredefinedMetricSpecification" in policy:
            predefined.add(policy["PredefinedMetricSpecification"]["PredefinedMetricType"])
        else:
            backlog = policy["CustomizedMetricSpecification"]["Metrics"]
    assert predefined == {"ECSServiceAverageCPUUtilization"}
    assert backlog is not None
    queries = {q["Id"]: q for q in backlog}
    lag = queries["lag"]["MetricStat"]["Metric"]
    assert lag["MetricName"] == "weelo_stream_lag_entries"
    dims = {d["Name"]: d["Value"] for d in lag["Dimensions"]}
    assert dims == {"service": name, "stream": stream, "group": name}
    tasks = queries["tasks"]["MetricStat"]["Metric"]
    assert tasks["MetricName"] == "RunningTaskCount"
    assert {d["Name"]: d["Value"] for d in tasks["Dimensions"]}["ServiceName"] == f"weelo-{name}"
    assert [q["Id"] for q in backlog if q["ReturnData"]] == ["backlog"]
    assert queries["backlog"]["Expression"] == "lag / tasks"


def test_a_stack_update_leaves_autoscaled_counts_alone(template: dict[str, Any]) -> None:
    """Every autoscaled service sets no DesiredCount (so an update never resets what autoscaling
    chose); the one fixed service, the fan-out, is the only one that sets it."""
    scaled = scaled_services(template)
    services = resources_of(template, "AWS::ECS::Service")
    assert set(scaled) == set(services) - {"FanoutService"}
    for name, service in services.items():
        assert ("DesiredCount" in service["Properties"]) == (name == "FanoutService"), name


# ------------------------------------------------------------------ 8. least privilege


def test_one_task_role_per_service_in_the_outputs(template: dict[str, Any]) -> None:
    """Outputs GatewayTaskRoleArn ... OpsTaskRoleArn each name a role of their own, and the
    deploy role may pass each of them (and the execution role) to ECS, nothing else."""
    outputs = template["Outputs"]
    roles = {}
    for name, role in TASK_ROLES.items():
        value = outputs[f"{name.capitalize()}TaskRoleArn"]["Value"]
        assert value == {"Fn::GetAtt": [role, "Arn"]}
        roles[name] = role
    assert len(set(roles.values())) == len(TASK_ROLES)
    assert "TaskRoleArn" not in outputs and "TaskRole" not in template["Resources"]
    for name in ("JwtSecretArn", "AppSecretArn", "TaskExecutionRoleArn"):
        assert name in outputs
    (policy,) = template["Resources"]["DeployRole"]["Properties"]["Policies"]
    (passing,) = (s for s in policy["PolicyDocument"]["Statement"] if s["Action"] == "iam:PassRole")
    assert refs(passing["Resource"]) == {*TASK_ROLES.values(), "TaskExecutionRole"}


def test_only_the_gateway_reads_the_jwt_secret(template: dict[str, Any]) -> None:
    """The gateway's task role reads the JWT secret and not the app secret (ECS injects its
    DATABASE_URL and REDIS_URL); every other task role reads only the app secret; the
    execution role reads only the app secret, for that injection."""
    read = {"secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"}
    for name, role in TASK_ROLES.items():
        secret, other = (
            ("JwtSecret", "AppSecret") if name == "gateway" else ("AppSecret", "JwtSecret")
        )
        assert actions_on(template, role, secret) == read, role
        assert not actions_on(template, role, other), role
        assert not actions_on(template, role, "RedisAuthSecret"), role
        assert {a for a in all_actions(template, role) if a.startswith("secretsmanager:")} == read
    execution = "TaskExecutionRole"
    assert actions_on(template, execution, "AppSecret") == {"secretsmanager:GetSecretValue"}
    assert not actions_on(template, execution, "JwtSecret")
    for role in resources_of(template, "AWS::IAM::Role"):
        if role not in ("GatewayTaskRole", "JwtRotationFunctionRole"):
            assert not actions_on(template, role, "JwtSecret"), role


def test_the_migration_task_may_only_read_its_secret(template: dict[str, Any]) -> None:
    """The migration task's role can read the app secret and nothing else (no Exec, no metrics)."""
    assert all_actions(template, "MigrateTaskRole") == {
        "secretsmanager:GetSecretValue",
        "secretsmanager:DescribeSecret",
    }


# ------------------------------------------------------------------ 11. ECS Exec


def test_ecs_exec_is_on_and_its_sessions_are_logged(template: dict[str, Any]) -> None:
    """Every ECS service enables ECS Exec; every service's task role and the ops task's role have
    the SSM channels and may write the session log; the cluster logs sessions to its own
    retained log group."""
    for name in SERVICES:
        assert service_of(template, name)["EnableExecuteCommand"] is True
    for name in (*SERVICES, "ops"):
        role = TASK_ROLES[name]
        assert all_actions(template, role) >= EXEC_ACTIONS, role
        assert "logs:PutLogEvents" in actions_on(template, role, "ExecLogGroup"), role
    assert not EXEC_ACTIONS & all_actions(template, "MigrateTaskRole")
    config = template["Resources"]["Cluster"]["Properties"]["Configuration"]
    exec_config = config["ExecuteCommandConfiguration"]
    assert exec_config["Logging"] == "OVERRIDE"
    assert exec_config["LogConfiguration"]["CloudWatchLogGroupName"] == {"Ref": "ExecLogGroup"}
    assert template["Resources"]["ExecLogGroup"]["DeletionPolicy"] == "Retain"


# ------------------------------------------------------------------ 10. room for staging

NAMED = {
    "AWS::SecretsManager::Secret": "Name",
    "AWS::ECR::Repository": "RepositoryName",
    "AWS::Logs::LogGroup": "LogGroupName",
    "AWS::ECS::Cluster": "ClusterName",
    "AWS::CloudWatch::Alarm": "AlarmName",
    "AWS::SNS::Topic": "TopicName",
}


def physical_names(template: dict[str, Any], names: dict[str, str]) -> dict[str, str]:
    """logical id -> the physical name the stack would give it, for the given parameters."""
    found = {}
    for kind, prop in NAMED.items():
        for logical, resource in resources_of(template, kind).items():
            if prop in resource["Properties"]:
                found[logical] = evaluate(resource["Properties"][prop], names)
    return found


def test_staging_and_production_names_never_meet(template: dict[str, Any]) -> None:
    """A staging stack and a production stack in one account and region give every named
    resource (secrets, repository, log groups, cluster, alarms, topic) different names, and
    their task definition families differ too."""
    production = physical_names(
        template, stack_names("production", "9f1c2d3e-aaaa-bbbb-cccc-0123456789ab")
    )
    staging = physical_names(
        template, stack_names("staging", "9f1c2d3e-aaaa-bbbb-cccc-0123456789ab")
    )
    assert set(production) == set(staging) and len(production) >= 20
    assert not set(production.values()) & set(staging.values())
    assert production["Cluster"] == "weelo-production"
    prefix = template["Outputs"]["TaskFamilyPrefix"]["Value"]
    assert evaluate(prefix, stack_names("production", "u")) == "weelo"
    assert evaluate(prefix, stack_names("staging", "u")) == "weelo-staging"


def test_a_recreated_stack_does_not_collide_with_what_the_old_one_kept(
    template: dict[str, Any],
) -> None:
    """Every resource kept after its stack is deleted (DeletionPolicy Retain) is named after the
    stack's own id, so the same environment re-created gets new names for all of them."""
    first = physical_names(
        template, stack_names("production", "11111111-2222-3333-4444-555555555555")
    )
    again = physical_names(
        template, stack_names("production", "66666666-7777-8888-9999-000000000000")
    )
    retained = {k for k, v in template["Resources"].items() if v.get("DeletionPolicy") == "Retain"}
    named_retained = retained & set(first)
    assert {"AppSecret", "JwtSecret", "RedisAuthSecret", "Repository", "LogGroup"} <= named_retained
    for logical in named_retained:
        assert first[logical] != again[logical], logical
        assert "555555555555" in first[logical], logical


def test_the_docs_say_what_every_alarm_means(template: dict[str, Any]) -> None:
    """docs/operations.md's "Alarms" table has a row for every alarm of the stack (the services'
    below-desired alarms as one SERVICE row), and no row for an alarm the stack lacks."""
    docs = (ROOT / "docs" / "operations.md").read_text()
    section = docs.split("\n## Alarms\n", 1)[1].split("\n## ", 1)[0]
    rows = set(re.findall(r"^\| `([a-zA-Z0-9-]+)` \|", section, re.MULTILINE))
    names = set()
    for alarm in alarms(template).values():
        name = alarm["AlarmName"]["Fn::Sub"].removeprefix("weelo-${Environment}-")
        for service in SERVICES:
            name = name.replace(f"{service}-tasks-", "SERVICE-tasks-")
        names.add(name)
    assert rows == names
