"""The connection budget (docs/operations.md, "Connection budget"): at the stack's default sizes,
during a rolling deploy of every service at once (MaximumPercent 200, each service at its
autoscaling maximum), the PostgreSQL connections the services can open fit the max_connections
the stack sets for the database class, with room for a migration, one-off tasks and operators.

The per-process figures come from the code (`ServiceSpec.pool_size`, `RELAY_CONNECTIONS`,
`PROBE_CONNECTIONS`, `dedicated_connections`) and the task definitions' DB_POOL_SIZE, the counts
from the stack."""

from __future__ import annotations

import importlib
import json
import math
from dataclasses import dataclass
from typing import Any

import pytest

from libs.cli import SERVICES
from libs.runtime.health import PROBE_CONNECTIONS
from libs.runtime.service import RELAY_CONNECTIONS, ServiceSpec
from libs.runtime.settings import Settings, load_settings
from tests.deploy.conftest import ROOT
from tests.deploy.stack_template import load_template, refs, resources_of

# RDS keeps superuser_reserved_connections (3) and rds.rds_superuser_reserved_connections (2)
# of max_connections for itself.
RDS_RESERVED = 5
# Outside the services: the deploy's migration (one connection, `libs/schema/migrate.py`), two
# one-off `weelo ops` tasks at once (one each, `ops_cli.py`), five operators' psql sessions.
ONE_OFF = 1 + 2 + 5
# The relay's connections are open only in the lease holder; a holder cut off from the others
# keeps its own until they time out (about 25 s) while its successor opens new ones.
RELAY_HOLDERS = 2


@dataclass(frozen=True)
class Budget:
    tasks: dict[str, int]  # at the worst moment of a rolling deploy
    per_task: dict[str, int]  # pool + connections outside it, relay apart
    everything: int  # the worst case in all
    simple_bound: int  # every task at DB_POOL_SIZE: tasks x DB_POOL_SIZE
    max_connections: int


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


def settings_of(name: str) -> Settings:
    """The settings a service's task definition gives it (secrets stand-ins)."""
    task = json.loads((ROOT / f"deploy/ecs/task-definitions/{name}.json").read_text())
    env = {e["name"]: e["value"] for e in task["containerDefinitions"][0].get("environment", [])}
    stand_ins = {"DATABASE_URL": "postgresql://x", "REDIS_URL": "redis://x", "JWT_SECRET": "x" * 32}
    return load_settings({**env, **stand_ins, "JWT_REFRESH_SECRET": "y" * 32})


def spec_of(name: str) -> ServiceSpec:
    spec = importlib.import_module(f"services.{name}.main").SERVICE
    assert isinstance(spec, ServiceSpec)
    return spec


def most_tasks(template: dict[str, Any], name: str) -> int:
    """A service's most tasks in a rolling deploy: its autoscaling maximum (or its fixed count)
    times MaximumPercent."""
    params = template["Parameters"]
    (service_id, service) = next(
        (k, v["Properties"])
        for k, v in resources_of(template, "AWS::ECS::Service").items()
        if v["Properties"]["ServiceName"] == f"weelo-{name}"
    )
    targets = [
        t["Properties"]
        for t in resources_of(template, "AWS::ApplicationAutoScaling::ScalableTarget").values()
        if service_id in refs(t["Properties"]["ResourceId"])
    ]
    count = targets[0]["MaxCapacity"] if targets else service["DesiredCount"]
    (parameter,) = refs(count)
    percent = service["DeploymentConfiguration"]["MaximumPercent"]
    return math.floor(int(params[parameter]["Default"]) * percent / 100)


def budget(template: dict[str, Any]) -> Budget:
    tasks, per_task, simple = {}, {}, 0
    for name in SERVICES:
        spec, settings = spec_of(name), settings_of(name)
        tasks[name] = most_tasks(template, name)
        # The deep /health holds one connection of its own at most (one round at a time).
        per_task[name] = spec.pool_size(settings) + spec.dedicated_connections + PROBE_CONNECTIONS
        simple += tasks[name] * settings.db_pool_size
    services = sum(tasks[n] * per_task[n] for n in SERVICES)
    everything = services + RELAY_HOLDERS * RELAY_CONNECTIONS + ONE_OFF
    default_class = template["Parameters"]["DatabaseInstanceClass"]["Default"]
    limit = int(template["Mappings"]["DatabaseClass"][default_class]["MaxConnections"])
    return Budget(tasks, per_task, everything, simple + ONE_OFF, limit)


def test_a_process_never_exceeds_db_pool_size() -> None:
    """Each service's pool plus what it opens outside it (the relay's connections, the health
    probe's, a fan-out's record connection) is exactly DB_POOL_SIZE, the figure the budget
    starts from."""
    for name in SERVICES:
        spec, settings = spec_of(name), settings_of(name)
        outside = RELAY_CONNECTIONS + PROBE_CONNECTIONS + spec.dedicated_connections
        assert spec.pool_size(settings) + outside == settings.db_pool_size, name


def test_the_worst_rolling_deploy_fits_max_connections(template: dict[str, Any]) -> None:
    """Every service at its autoscaling maximum, doubled by a rolling deploy, each pool full,
    the relay's connections in two holders, the probes, a migration, one-off tasks and
    operators: all within max_connections less RDS's reserved ones."""
    worst = budget(template)
    assert worst.everything <= worst.max_connections - RDS_RESERVED, worst


def test_the_budget_in_the_docs_is_the_stacks(template: dict[str, Any]) -> None:
    """docs/operations.md quotes the worst case, the simple bound and max_connections that this
    stack gives, so the numbers there are the ones this test checks."""
    worst = budget(template)
    docs = (ROOT / "docs" / "operations.md").read_text()
    section = docs.split("## Connection budget", 1)[1].split("\n## ", 1)[0]
    for figure in (worst.everything, worst.simple_bound, worst.max_connections):
        assert f"**{figure}**" in section, figure


def test_the_database_gets_the_mapped_max_connections(template: dict[str, Any]) -> None:
    """The parameter group sets max_connections from the class's mapping entry, so the figure
    the budget is checked against is the database's own; each stays at or under RDS's default
    (memory / 9531392), and only mapped classes can be chosen."""
    group = template["Resources"]["DatabaseParameterGroup"]["Properties"]["Parameters"]
    assert group["max_connections"] == {
        "Fn::FindInMap": ["DatabaseClass", {"Ref": "DatabaseInstanceClass"}, "MaxConnections"]
    }
    memory_gib = {"medium": 4, "large": 8, "xlarge": 16}
    for name, figures in template["Mappings"]["DatabaseClass"].items():
        gib = memory_gib[name.rsplit(".", 1)[1]] * (2 if name.startswith("db.r") else 1)
        assert int(figures["MaxConnections"]) <= gib * 2**30 // 9531392 * 0.9, name
