"""Reading deploy/ecs/stack.yaml in the deploy tests: the template as cfn-lint parses it, the
resources of a type, what a value refers to, the Allow statements of a role, and the few
intrinsic functions the stack's physical names use, evaluated for a given environment."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from cfnlint.decode import cfn_yaml

from tests.deploy.conftest import ROOT

STACK = ROOT / "deploy" / "ecs" / "stack.yaml"
RULES = ROOT / "deploy" / "cfn-rules"
CFN_LINT = Path(sys.executable).parent / "cfn-lint"
Template = dict[str, Any]


def load_template(path: Path = STACK) -> Template:
    return dict(cfn_yaml.load(str(path)))


def resources_of(template: Template, kind: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def refs(value: Any) -> set[str]:
    """Every logical id or pseudo parameter `value` names (Ref, Fn::GetAtt, ${...} of Fn::Sub)."""
    found: set[str] = set()
    if isinstance(value, dict):
        for key, inner in value.items():
            if key == "Ref":
                found.add(str(inner))
            elif key == "Fn::GetAtt":
                found.add(str(inner[0]) if isinstance(inner, list) else str(inner).split(".")[0])
            elif key == "Fn::Sub":
                text = str(inner if isinstance(inner, str) else inner[0])
                found |= {part.split("}")[0].split(".")[0] for part in text.split("${")[1:]}
                found |= refs(inner)
            else:
                found |= refs(inner)
    elif isinstance(value, list):
        for inner in value:
            found |= refs(inner)
    return found


def allow_statements(template: Template, role: str) -> Iterator[dict[str, Any]]:
    """The Allow statements a role has: inline policies and the stack's managed policies."""
    props = template["Resources"][role]["Properties"]
    documents = [p["PolicyDocument"] for p in props.get("Policies", [])]
    for managed in refs(props.get("ManagedPolicyArns", [])) & set(template["Resources"]):
        documents.append(template["Resources"][managed]["Properties"]["PolicyDocument"])
    for document in documents:
        for statement in as_list(document["Statement"]):
            if statement["Effect"] == "Allow":
                yield statement


def actions_on(template: Template, role: str, resource: str) -> set[str]:
    """The actions a role may take on the resource with logical id `resource`."""
    return {
        action
        for statement in allow_statements(template, role)
        if resource in refs(statement["Resource"])
        for action in as_list(statement["Action"])
    }


def all_actions(template: Template, role: str) -> set[str]:
    return {
        action
        for statement in allow_statements(template, role)
        for action in as_list(statement["Action"])
    }


def evaluate(value: Any, names: Mapping[str, str]) -> Any:
    """`value` with Ref, Fn::Sub, Fn::Select, Fn::Split, Fn::Join and Fn::If worked out, `names`
    giving the parameters, pseudo parameters and conditions other than IsProduction."""
    if isinstance(value, list):
        return [evaluate(v, names) for v in value]
    if not isinstance(value, dict):
        return value
    ((key, arg),) = value.items()
    return _FUNCTIONS[key](arg, names)


def _sub(arg: Any, names: Mapping[str, str]) -> str:
    text, extra = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])
    known = {**names, **{k: evaluate(v, names) for k, v in extra.items()}}
    for name, replacement in known.items():
        text = text.replace("${" + name + "}", str(replacement))
    return str(text)


def _if(arg: Any, names: Mapping[str, str]) -> Any:
    """IsProduction from `Environment`; any other condition as `names` gives it ("true")."""
    if arg[0] == "IsProduction":
        chosen = names["Environment"] == "production"
    else:
        chosen = names[arg[0]] == "true"
    return evaluate(arg[1] if chosen else arg[2], names)


def _ref(arg: Any, names: Mapping[str, str]) -> Any:
    """A parameter or pseudo parameter; None for AWS::NoValue (the property is left out)."""
    return None if arg == "AWS::NoValue" else names[arg]


_FUNCTIONS: dict[str, Any] = {
    "Ref": _ref,
    "Fn::Sub": _sub,
    "Fn::Select": lambda arg, names: evaluate(arg[1], names)[int(arg[0])],
    "Fn::Split": lambda arg, names: str(evaluate(arg[1], names)).split(arg[0]),
    "Fn::Join": lambda arg, names: arg[0].join(evaluate(arg[1], names)),
    "Fn::If": _if,
}


def stack_names(environment: str, stack_uuid: str) -> dict[str, str]:
    """The parameters and pseudo parameters a stack of `environment` would see."""
    return {
        "Environment": environment,
        "AWS::StackName": f"weelo-{environment}",
        "AWS::StackId": (
            f"arn:aws:cloudformation:eu-west-1:123456789012:stack/weelo-{environment}/{stack_uuid}"
        ),
    }


def run_cfn_lint(path: Path) -> subprocess.CompletedProcess[str]:
    """cfn-lint with the Weelo rules on the template at `path`."""
    return subprocess.run(
        [str(CFN_LINT), "--append-rules", str(RULES), "--template", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=180,
    )
