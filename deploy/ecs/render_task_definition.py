#!/usr/bin/env python3
"""Render a Weelo ECS task definition template into a file `aws ecs register-task-definition` takes.

    IMAGE=... SECRET_ARN=... TASK_ROLE_ARN=... EXECUTION_ROLE_ARN=... LOG_GROUP=... AWS_REGION=... \
        deploy/ecs/render_task_definition.py deploy/ecs/task-definitions/gateway.json out.json

Each `${NAME}` in a string of the template is replaced by the environment variable NAME; only
the names in PLACEHOLDERS may appear, and each must have a non-empty value, else nothing is
written and the exit code is 1. Standard library only: it runs on a bare CI runner.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping
from typing import Any

PLACEHOLDERS = (
    "IMAGE",
    "SECRET_ARN",
    "TASK_ROLE_ARN",
    "EXECUTION_ROLE_ARN",
    "LOG_GROUP",
    "AWS_REGION",
)
PATTERN = re.compile(r"\$\{([A-Za-z0-9_]+)\}")


class RenderError(ValueError):
    """A placeholder is unknown or has no value."""


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
        rendered = render(template, os.environ)
    except RenderError as e:
        print(f"render_task_definition: {source}: {e}", file=sys.stderr)
        return 1
    with open(target, "w", encoding="utf-8") as handle:
        json.dump(rendered, handle, indent=2)
        handle.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
