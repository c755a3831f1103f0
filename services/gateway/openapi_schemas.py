"""The API document's shared parts: the schemas of the msgspec types it names (collected while
the operations are built, rendered at the end by `msgspec.json.schema_components`), the
reusable parameters and headers, the security schemes, and the `info` block with the table of
every error code."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import msgspec

from services.gateway.http import ID_PATTERN, Handler
from services.gateway.openapi_errors import EDGE, ERROR_CODES, SERVER, ErrorBody, by_status

Json = dict[str, Any]
_SCHEMAS = "#/components/schemas/"
_ERROR_HEADERS = {401: ["WWW-Authenticate"], 429: ["Retry-After"]}
_EXAMPLE_DETAILS: dict[str, Json] = {
    "invalid_request": {
        "details": [{"field": "trucks[0].quantity", "problem": "Expected `int` <= 20"}]
    },
    "active_broadcast_exists": {"broadcastId": "b-7c1e2f"},
    "no_longer_available": {"available": 1},
}
_TAGS = {
    "services.gateway.fleet": "Fleet",
    "services.gateway.broadcasts": "Broadcasts",
    "services.gateway.accepts": "Accepting",
    "services.gateway.assignments": "Assignments and drivers",
}
HEADERS: Json = {
    "Idempotent-Replayed": {
        "description": "`true` when this is the stored response of an earlier request with the "
        "same Idempotency-Key and body (or, for a search, the same active search).",
        "schema": {"type": "string", "enum": ["true"]},
    },
    "Retry-After": {
        "description": "Whole seconds until a request is allowed again (at least 1).",
        "schema": {"type": "integer", "minimum": 1},
    },
    "WWW-Authenticate": {"schema": {"type": "string", "enum": ["Bearer"]}},
}
IDEMPOTENCY_KEY: Json = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "A retry with the same key and body answers the first response again "
    "(`Idempotent-Replayed: true`); the same key with another body is 422 "
    "`idempotency_key_reused`; a retry while the first runs is 409 `request_in_flight`.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
}
SECURITY: Json = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "HS256 access token with `sub`, `role` (`customer`, `transporter` or "
        "`driver`) and `exp`; `weelo token --role ROLE --sub ID` prints one.",
    },
    "queryToken": {
        "type": "apiKey",
        "in": "query",
        "name": "token",
        "description": "The access token as `?token=`, for `/v1/ws` only (a browser's "
        "WebSocket cannot send headers).",
    },
}


def tags_of(handler: Handler) -> list[str]:
    return [_TAGS[handler.__module__]]


class Schemas:
    """The types and path parameters the document names, and the components they make."""

    def __init__(self) -> None:
        self._types: list[type[msgspec.Struct]] = []
        self._params: set[str] = set()
        self._responses: dict[str, Json] = {}

    def ref(self, kind: type[msgspec.Struct] | None) -> Json:
        if kind is None:
            raise ValueError("no type to refer to")
        if kind not in self._types:
            self._types.append(kind)
        return {"$ref": _SCHEMAS + kind.__name__}

    def error_ref(self) -> Json:
        return self.ref(ErrorBody)

    def header(self, name: str) -> Json:
        return {"$ref": f"#/components/headers/{name}"}

    def path_param(self, name: str) -> Json:
        self._params.add(name)
        return {"$ref": f"#/components/parameters/{name}"}

    def response(self, name: str, response: Json) -> Json:
        """`response`, kept once under `name` and referred to."""
        self._responses[name] = response
        return {"$ref": f"#/components/responses/{name}"}

    def components(self) -> Json:
        refs, schemas = msgspec.json.schema_components(
            self._types, ref_template=_SCHEMAS + "{name}"
        )
        for kind, ref in zip(self._types, refs, strict=True):
            if ref != self.ref(kind):  # two types of one name would share a schema
                raise ValueError(f"{kind!r} is named {ref} in the schemas")
        params = {name: _path_param(name) for name in sorted(self._params)}
        return {
            "schemas": dict(sorted(schemas.items())),
            "responses": dict(sorted(self._responses.items())),
            "parameters": {**params, "Idempotency-Key": IDEMPOTENCY_KEY},
            "headers": HEADERS,
            "securitySchemes": SECURITY,
        }


def example_error(code: str) -> Json:
    """An error body of `code`, with the detail fields it carries."""
    fields = {"code": code, "message": ERROR_CODES[code].message, **_EXAMPLE_DETAILS.get(code, {})}
    return {"error": fields}


def error_response(schemas: Schemas, status: int, codes: list[str]) -> Json:
    """One error status of an operation: the error body, its `code` one of `codes`."""
    lines = [f"- `{code}`: {ERROR_CODES[code].message}" for code in codes]
    only = {"properties": {"error": {"properties": {"code": {"enum": codes}}}}}
    schema = {"allOf": [schemas.error_ref(), only]}
    examples = {code: {"value": example_error(code)} for code in codes}
    response: Json = {
        "description": f"{HTTPStatus(status).phrase}.\n\n" + "\n".join(lines),
        "content": {"application/json": {"schema": schema, "examples": examples}},
        "x-codes": codes,
    }
    if status in _ERROR_HEADERS:
        response["headers"] = {
            h: {"$ref": f"#/components/headers/{h}"} for h in _ERROR_HEADERS[status]
        }
    return response


def error_responses(schemas: Schemas, codes: list[str]) -> Json:
    """The error statuses answering `codes`; a status of one code refers to that code's."""
    found: Json = {}
    for status, answered in by_status(codes).items():
        response = error_response(schemas, status, answered)
        one = len(answered) == 1
        found[str(status)] = schemas.response(answered[0], response) if one else response
    return found


def _path_param(name: str) -> Json:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": "An id: 1 to 64 of `A-Za-z0-9_-`; any other names nothing (404).",
        "schema": {"type": "string", "pattern": ID_PATTERN},
    }


_INTRO = """\
Weelo's dispatch API: customers search for trucks, transporters accept, drivers are assigned.
Generated from the gateway's route table and its msgspec types (`python -m \
services.gateway.openapi`); the live updates are the WebSocket `/v1/ws`, described by the \
AsyncAPI document at `/asyncapi.json` (`docs/websocket.md`).

Every `/v1` call but `/v1/auth/refresh` needs `Authorization: Bearer <access token>`; each \
operation says the roles it admits (`x-roles`). Every response carries `X-Request-ID` (the \
caller's, when it sent a sane one). Every `GET` answers `HEAD` too. A path that names no \
route is 404 `not_found` (a trailing slash included, never a redirect); a method the path \
does not have is 405 `method_not_allowed`. The live screens under `/app/` are pages, not API.

## Error codes

Every error body is `{"error": {"code", "message", ...details}}`. Each operation lists the \
codes it can answer per status (`x-codes`); these are all of them:

| status | code | message |
|---|---|---|
"""


def info() -> Json:
    ordered = sorted(ERROR_CODES.items(), key=lambda item: item[1].status)
    rows = [f"| {e.status} | `{c}` | {e.message} |" for c, e in ordered]
    notes = (
        f"\nThe gateway's own: {', '.join(f'`{c}`' for c in EDGE)}. Answered by the HTTP server "
        f"before any route, on any path: {', '.join(f'`{c}`' for c in SERVER)}.\n"
    )
    return {
        "title": "Weelo dispatch API",
        "version": "1",
        "description": _INTRO + "\n".join(rows) + "\n" + notes,
    }
