"""The API document's routes outside the `/v1` table: health, metrics, the documents and their
page, and the WebSocket upgrade (whose frames the AsyncAPI document at `/asyncapi.json`
describes)."""

from __future__ import annotations

from typing import Any, Final

from msgspec import Struct

from libs.runtime.tokens import ROLES
from services.gateway.openapi_schemas import Schemas, error_responses
from services.gateway.realtime.endpoint import PATH as SOCKET_PATH

Json = dict[str, Any]
REFRESH_PATH: Final = "/v1/auth/refresh"
# The files of Swagger UI (from the `swagger-ui-bundle-v2` package) and our own start script.
DOCS_ASSETS: Final = (
    "swagger-ui-bundle.js",
    "swagger-ui.css",
    "swagger-ui.css.map",
    "favicon-32x32.png",
    "favicon-16x16.png",
    "start.js",
)
TAGS: Final[list[Json]] = [
    {"name": "Auth"},
    {"name": "Fleet", "description": "A transporter's vehicles and drivers."},
    {"name": "Broadcasts", "description": "A customer's search, and who sees it."},
    {"name": "Accepting", "description": "A transporter claims truck requests."},
    {"name": "Assignments and drivers"},
    {"name": "Realtime", "description": "The WebSocket; its frames: `/asyncapi.json`."},
    {"name": "Operations", "description": "Health and metrics (also on every service's port)."},
    {"name": "Documentation"},
]


class HealthChecks(Struct, frozen=True, kw_only=True):
    """`ok`, or `failing: <error type>`."""

    postgres: str
    redis: str


class Health(Struct, frozen=True, kw_only=True):
    """`ok` when every check is; `unavailable` (with status 503) otherwise."""

    status: str
    checks: HealthChecks


class Live(Struct, frozen=True, kw_only=True):
    status: str


def _plain(
    operation_id: str, tag: str, summary: str, responses: Json, description: str = ""
) -> Json:
    found: Json = {"operationId": operation_id, "tags": [tag], "summary": summary}
    if description:
        found["description"] = description
    return {**found, "security": [], "responses": responses}


def _json(description: str, schema: Json) -> Json:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def operations_paths(schemas: Schemas) -> dict[str, Json]:
    """`/health`, `/livez` and `/metrics`."""
    health = schemas.ref(Health)
    return {
        "/health": {"get": _plain("health", "Operations", "Readiness: PostgreSQL and Redis", {
            "200": _json("Every check is `ok`.", health),
            "503": _json("A check fails; the body names it.", health),
        }, "For load balancers and rollouts.")},
        "/livez": {"get": _plain("livez", "Operations", "Liveness: the event loop runs", {
            "200": _json("Running.", schemas.ref(Live)),
        }, "Checks no dependency, so a failover never fails it.")},
        "/metrics": {"get": _plain("metrics", "Operations", "Prometheus metrics", {
            "200": {"description": "Prometheus text format.",
                    "content": {"text/plain": {"schema": {"type": "string"}}}},
        })},
    }  # fmt: skip


def documentation_paths(schemas: Schemas) -> dict[str, Json]:
    """This document, its page and the page's files, and the WebSocket's document."""
    json_doc = {"type": "object"}
    html = {"text/html": {"schema": {"type": "string"}}}
    asset = {
        "name": "name",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "enum": list(DOCS_ASSETS)},
    }
    page = {
        "description": "Swagger UI; every file it loads comes from this server.",
        "content": html,
    }
    asset_responses = {
        "200": {"description": "The file."},
        **error_responses(schemas, ["not_found"]),
    }
    return {
        "/openapi.json": {"get": _plain("openapi", "Documentation", "This document", {
            "200": _json("OpenAPI 3.1.", json_doc)})},
        "/asyncapi.json": {"get": _plain("asyncapi", "Documentation", "The WebSocket's document", {
            "200": _json("AsyncAPI 3.0: every frame of `/v1/ws`.", json_doc)})},
        "/docs": {"get": _plain("docs", "Documentation", "This document, rendered", {"200": page})},
        "/docs/assets/{name}": {"get": {
            **_plain("docsAsset", "Documentation", "A file of the page", asset_responses),
            "parameters": [asset],
        }},
    }  # fmt: skip


def socket_paths(schemas: Schemas) -> dict[str, Json]:
    """`GET /v1/ws`: the upgrade, refused with the API's error body before it when it must."""
    query = [
        {"name": "token", "in": "query", "required": False, "schema": {"type": "string"},
         "description": "The access token, when no `Authorization` header is sent."},
        {"name": "lastEventId", "in": "query", "required": False, "schema": {"type": "string"},
         "description": "Replay every message after this `eventId` first; one too old or "
                        "unknown makes the first frame `resync_required`."},
    ]  # fmt: skip
    codes = ["bad_request", "unauthorized", "rate_limited", "unavailable"]
    operation: Json = {
        "operationId": "openSocket",
        "tags": ["Realtime"],
        "summary": "Open the WebSocket",
        "description": "An HTTP upgrade (`Upgrade: websocket`). The frames, their `data`, who "
        "receives them and the close codes: the AsyncAPI document at `/asyncapi.json` "
        "(rendered in `docs/websocket.md`).\n\nRoles: every role.",
        "externalDocs": {"description": "AsyncAPI 3.0 document", "url": "/asyncapi.json"},
        "security": [{"bearer": []}, {"queryToken": []}],
        "x-roles": list(ROLES),
        "parameters": query,
        "responses": {
            "101": {"description": "Switching Protocols: the socket is open."},
            **error_responses(schemas, codes),
        },
    }
    return {SOCKET_PATH: {"get": operation}}


def paths(schemas: Schemas) -> dict[str, Json]:
    return {**operations_paths(schemas), **documentation_paths(schemas), **socket_paths(schemas)}
