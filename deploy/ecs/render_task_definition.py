#!/usr/bin/env python3
"""Render a Weelo ECS task definition template into a file `aws ecs register-task-definition` takes.

    IMAGE=... SECRET_ARN=... JWT_SECRET_ARN=... GATEWAY_TASK_ROLE_ARN=... (one role per service)
    EXECUTION_ROLE_ARN=... LOG_GROUP=... AWS_REGION=... \
        deploy/ecs/render_task_definition.py deploy/ecs/task-definitions/gateway.json out.json

Each `${NAME}` in a string of the template is replaced by the environment variable NAME; only
the names in PLACEHOLDERS may appear, and each must have a non-empty value, else nothing is
written and the exit code is 1. Three have a default when unset or empty (DEFAULTS):
TASK_FAMILY_PREFIX (weelo: production's families weelo-gateway, ...; the stack's output
TaskFamilyPrefix gives another environment's, since families are account-wide),
CPU_ARCHITECTURE (X86_64; ARM64 runs the tasks on Graviton, for an image built for linux/arm64)
and COLLECTOR_IMAGE (the ADOT collector sidecar's image, pinned by version; set it to a copy in
a private registry, e.g. an ECR pull-through cache, where the tasks cannot reach public.ecr.aws).
COLLECTOR_CONFIG is never read from the environment: it is the text of collector.yaml beside
this script. Standard library only: it runs on a bare CI runner.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SERVICES = ("gateway", "broadcast", "acceptance", "timer", "presence", "fanout")
ONE_OFF = ("migrate", "ops")


def task_role_placeholder(name: str) -> str:
    """The placeholder of the task role of `name` (a service or a one-off task)."""
    return f"{name.upper()}_TASK_ROLE_ARN"


PLACEHOLDERS = (
    "IMAGE",
    "SECRET_ARN",
    "JWT_SECRET_ARN",
    *(task_role_placeholder(name) for name in (*SERVICES, *ONE_OFF)),
    "EXECUTION_ROLE_ARN",
    "LOG_GROUP",
    "AWS_REGION",
    "CPU_ARCHITECTURE",
    "COLLECTOR_IMAGE",
    "COLLECTOR_CONFIG",
    "TASK_FAMILY_PREFIX",
)
CPU_ARCHITECTURES = ("X86_64", "ARM64")
COLLECTOR_IMAGE = "public.ecr.aws/aws-observability/aws-otel-collector:v0.49.0"
DEFAULTS = {
    "CPU_ARCHITECTURE": "X86_64",
    "COLLECTOR_IMAGE": COLLECTOR_IMAGE,
    "TASK_FAMILY_PREFIX": "weelo",
}
COLLECTOR_CONFIG = Path(__file__).resolve().parent / "collector.yaml"
PINNED_COLLECTOR = re.compile(
    r"^(?:.+/)?aws-otel-collector(?::v\d+\.\d+\.\d+|@sha256:[0-9a-f]{64})$"
)
PATTERN = re.compile(r"\$\{([A-Za-z0-9_]+)\}")


class RenderError(ValueError):
    """A placeholder is unknown or has no value."""


def with_defaults(environ: Mapping[str, str]) -> dict[str, str]:
    """The values to render with: `environ`'s, DEFAULTS where it has none, COLLECTOR_CONFIG."""
    values = {name: environ[name] for name in PLACEHOLDERS if environ.get(name)}
    for name, default in DEFAULTS.items():
        values.setdefault(name, default)
    if values["CPU_ARCHITECTURE"] not in CPU_ARCHITECTURES:
        raise RenderError(
            f"CPU_ARCHITECTURE must be one of {', '.join(CPU_ARCHITECTURES)}, "
            f"got {values['CPU_ARCHITECTURE']!r}"
        )
    if not PINNED_COLLECTOR.match(values["COLLECTOR_IMAGE"]):
        raise RenderError(
            "COLLECTOR_IMAGE must be an aws-otel-collector image pinned by version (:vX.Y.Z) "
            f"or digest, got {values['COLLECTOR_IMAGE']!r}"
        )
    values["COLLECTOR_CONFIG"] = COLLECTOR_CONFIG.read_text(encoding="utf-8")
    return values


def render(template: Any, values: Mapping[str, str]) -> Any:
    """A copy of `template` (parsed JSON) with every placeholder replaced."""
    if isinstance(template, dict):
        return {k: render(v, values) for k, v in template.items()}
    if isinstance(template, list):
        return [render(v, values) for v in template]
    if isinstance(template, str):
        return PATTERN.sub(lambda m: _value(m.group(1), values), template)
    return template


def placeholders(template: Any) -> set[str]:
    """Every placeholder name used in `template`."""
    if isinstance(template, dict):
        return set().union(*(placeholders(v) for v in template.values()))
    if isinstance(template, list):
        return set().union(*(placeholders(v) for v in template))
    if isinstance(template, str):
        return set(PATTERN.findall(template))
    return set()


def _value(name: str, values: Mapping[str, str]) -> str:
    if name not in PLACEHOLDERS:
        raise RenderError(f"unknown placeholder ${{{name}}}")
    if not values.get(name):
        raise RenderError(f"placeholder ${{{name}}} has no value (set {name})")
    return values[name]


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    source, target = argv
    with open(source, encoding="utf-8") as handle:
        template = json.load(handle)
    try:
        rendered = render(template, with_defaults(os.environ))
    except RenderError as e:
        print(f"render_task_definition: {source}: {e}", file=sys.stderr)
        return 1
    with open(target, "w", encoding="utf-8") as handle:
        json.dump(rendered, handle, indent=2)
        handle.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
