"""Checks a real response against the API document: its status is one the operation declares,
its body matches that status's schema (view objects held strict: no field the document does not
name), and an error's `code` is one the document lists for that status."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any

import httpx
from jsonschema import Draft202012Validator

Json = dict[str, Any]
# The error body stays open by design: a code may add detail fields (CONTRACT.md section 2).
OPEN_SCHEMAS = frozenset({"ErrorFields"})


def strict_components(document: Json) -> Json:
    """The document's components, every closed-able object schema closed."""
    components = copy.deepcopy(document["components"])
    for name, schema in components["schemas"].items():
        if name not in OPEN_SCHEMAS and schema.get("type") == "object" and "properties" in schema:
            schema.setdefault("additionalProperties", False)
    return components


def _template(path: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\\{\w+\\}", "[^/]+", re.escape(path)) + "$")


@dataclass
class Conformance:
    """Every response seen, checked; which operations answered a success."""

    document: Json
    succeeded: set[tuple[str, str]] = field(default_factory=set)
    checked: int = 0

    def __post_init__(self) -> None:
        self._components = strict_components(self.document)
        self._paths = [(_template(p), p) for p in self.document["paths"]]

    def operation(self, method: str, path: str) -> tuple[str, Json]:
        for pattern, template in self._paths:
            if pattern.match(path) and method.lower() in self.document["paths"][template]:
                return template, self.document["paths"][template][method.lower()]
        raise AssertionError(f"{method} {path} matches no operation of the document")

    def response_of(self, operation: Json, status: int) -> Json:
        responses = operation["responses"]
        assert str(status) in responses, f"status {status} is not declared: {sorted(responses)}"
        found: Json = responses[str(status)]
        if "$ref" in found:
            found = self._components["responses"][found["$ref"].rsplit("/", 1)[1]]
        return found

    def check(self, response: httpx.Response) -> None:
        request = response.request
        method = "GET" if request.method == "HEAD" else request.method
        template, operation = self.operation(method, request.url.path)
        declared = self.response_of(operation, response.status_code)
        schema = declared.get("content", {}).get("application/json", {}).get("schema")
        if schema is not None:
            root = {"components": self._components, **schema}
            Draft202012Validator(root).validate(response.json())
        if "x-codes" in declared:
            assert response.json()["error"]["code"] in declared["x-codes"]
        if response.status_code < 300:
            self.succeeded.add((method, template))
        self.checked += 1

    def check_unrouted(self, response: httpx.Response) -> None:
        """A path or method the document does not have: a 404 or 405 of the error table."""
        code = response.json()["error"]["code"]
        assert self.document["x-error-codes"][code]["status"] == response.status_code
        self.checked += 1
