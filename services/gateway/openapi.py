"""The OpenAPI 3.1 document of the gateway (`GET /openapi.json`, `docs/openapi.json`), generated
from the route table (`routes.API`), the request bodies and views (msgspec structs, their
schemas by `msgspec.json.schema_components`) and the error catalogue (`openapi_errors.py`).

    python -m services.gateway.openapi > docs/openapi.json

regenerates the committed copy; a test fails when the two differ.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from libs.runtime.tokens import ROLES, Role
from services.gateway import openapi_public as public
from services.gateway.openapi_errors import ERROR_CODES, Answers, operation_codes
from services.gateway.openapi_operations import OPERATIONS, REFRESH, Operation, refusals_of
from services.gateway.openapi_schemas import Schemas, error_responses, info, tags_of
from services.gateway.routes import API

Json = dict[str, Any]
_PARAM = re.compile(r"{(\w+)}")


def success_responses(schemas: Schemas, operation: Operation, *, replayable: bool) -> Json:
    responses: Json = {}
    for ok in operation.ok:
        response: Json = {"description": ok.description}
        if ok.body is not None:
            response["content"] = {"application/json": {"schema": schemas.ref(ok.body)}}
        if replayable:  # a POST behind Idempotency-Key
            response["headers"] = {"Idempotent-Replayed": schemas.header("Idempotent-Replayed")}
        responses[str(ok.status)] = response
    return responses


def request_body(schemas: Schemas, operation: Operation) -> Json:
    optional = " May be empty." if operation.body_optional else ""
    return {
        "required": not operation.body_optional,
        "description": f"JSON; unknown fields are refused (422).{optional}",
        "content": {"application/json": {"schema": schemas.ref(operation.body)}},
    }


def parameters(schemas: Schemas, path: str, method: str) -> list[Json]:
    found = [schemas.path_param(name) for name in _PARAM.findall(path)]
    if method == "POST":
        found.append({"$ref": "#/components/parameters/Idempotency-Key"})
    return found


def roles_line(roles: tuple[Role, ...]) -> str:
    return "Roles: " + ", ".join(f"`{r}`" for r in roles) + "."


def api_operation(
    schemas: Schemas, method: str, path: str, roles: tuple[Role, ...], operation: Operation
) -> Json:
    """One `/v1` operation, authenticated by a bearer token of one of `roles`."""
    answers = Answers(
        path,
        role_checked=set(roles) != set(ROLES),
        body=operation.body is not None,
        refusals=refusals_of(operation),
        idempotent=method == "POST",
    )
    found: Json = {
        "summary": operation.summary,
        "description": "\n\n".join(filter(None, (operation.description, roles_line(roles)))),
        "security": [{"bearer": []}],
        "x-roles": list(roles),
        "parameters": parameters(schemas, path, method),
    }
    if operation.body is not None:
        found["requestBody"] = request_body(schemas, operation)
    found["responses"] = {
        **success_responses(schemas, operation, replayable=method == "POST"),
        **error_responses(schemas, operation_codes(answers)),
    }
    return found


def refresh_operation(schemas: Schemas) -> Json:
    answers = Answers(
        public.REFRESH_PATH,
        role_checked=False,
        body=True,
        refusals=(),
        idempotent=False,  # not behind Idempotency-Key: a retry just gets another pair
        uses_dependencies=False,  # the keys are in memory; the rate limit falls back in-process
    )
    return {
        "operationId": "refresh",
        "tags": ["Auth"],
        "summary": REFRESH.summary,
        "description": REFRESH.description,
        "security": [],
        "requestBody": request_body(schemas, REFRESH),
        "responses": {
            **success_responses(schemas, REFRESH, replayable=False),  # no Idempotency-Key here
            **error_responses(schemas, operation_codes(answers)),
        },
    }


def _operation_id(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def api_paths(schemas: Schemas) -> dict[str, Json]:
    paths: dict[str, Json] = {public.REFRESH_PATH: {"post": refresh_operation(schemas)}}
    for method, path, roles, handler in API:
        operation = api_operation(schemas, method, path, tuple(roles), OPERATIONS[handler])
        ids = {"operationId": _operation_id(handler.__name__), "tags": tags_of(handler)}
        paths.setdefault(path, {})[method.lower()] = {**ids, **operation}
    return paths


def document() -> Json:
    """The whole OpenAPI 3.1 document."""
    schemas = Schemas()
    paths = {**api_paths(schemas), **public.paths(schemas)}
    return {
        "openapi": "3.1.0",
        "info": info(),
        "tags": public.TAGS,
        "paths": dict(sorted(paths.items())),
        "components": schemas.components(),
        "x-error-codes": {c: {"status": e.status, "message": e.message}
                          for c, e in ERROR_CODES.items()},
    }  # fmt: skip


def render() -> bytes:
    """The document as served and committed: indented JSON, keys in a stable order."""
    return (json.dumps(document(), indent=2, ensure_ascii=False) + "\n").encode()


def main() -> None:
    sys.stdout.buffer.write(render())


if __name__ == "__main__":
    main()
