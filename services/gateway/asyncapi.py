"""The WebSocket reference: an AsyncAPI 3.0 document of `GET /v1/ws` (CONTRACT.md section 7).

Generated from the frame types (`libs/readmodel/frames.py`, `asyncapi_frames.py`) and the
gateway's close codes; served at `GET /asyncapi.json` and rendered into `docs/websocket.md`:

    python -m services.gateway.asyncapi             # the document (JSON)
    python -m services.gateway.asyncapi --markdown > docs/websocket.md

The document describes the gateway: it `send`s the server frames and `receive`s `ping`.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from libs.readmodel.frames import FRAME_TYPES
from services.gateway.asyncapi_frames import CONTROL, example, schemas
from services.gateway.asyncapi_socket import (
    CHANNEL,
    CLOSE_CODES,
    DESCRIPTION,
    channel_bindings,
    security_schemes,
)
from services.gateway.realtime.endpoint import PATH

PUBLIC_PATH = "/asyncapi.json"
ROLES = ("customer", "transporter", "driver")
_CONTROL_TO = {"pong": "the connection that sent `ping`", "resync_required": "any connection"}
_TRIP = "The driver's trip as `GET /v1/assignments/{id}` shows it, with pickup and drop."


def summary(kind: str) -> str:
    """The first line of the struct's docstring that describes the frame or its data."""
    data: dict[str, type] = {t.kind: t.data for t in FRAME_TYPES}
    doc = (CONTROL[kind][0] if kind in CONTROL else data[kind]).__doc__
    return _TRIP if kind == "trip_assigned" else (doc or "").strip().split("\n")[0]


Recipients = tuple[tuple[str, ...], str]  # the roles, and which of them


def recipients() -> dict[str, Recipients]:
    """Each server frame's roles and who of them receives it, in the order the page shows."""
    table: dict[str, Recipients] = {t.kind: ((t.role,), t.to) for t in FRAME_TYPES}
    return {**table, **{k: (ROLES, to) for k, to in _CONTROL_TO.items()}}


def message(kind: str, schema: str, to: Recipients | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": kind,
        "title": kind,
        "summary": summary(kind),
        "contentType": "application/json",
        "payload": {"$ref": f"#/components/schemas/{schema}"},
        "examples": [{"name": kind, "payload": example(kind)}],
    }
    if to is None:
        body["x-sent-by"] = "the client, any role"
    else:
        body["tags"] = [{"name": role} for role in to[0]]
        body["x-to"] = to[1]
    return body


def operation(action: str, kinds: list[str], summary: str) -> dict[str, Any]:
    refs = [{"$ref": f"#/channels/{CHANNEL}/messages/{k}"} for k in kinds]
    return {
        "action": action,
        "channel": {"$ref": f"#/channels/{CHANNEL}"},
        "summary": summary,
        "messages": refs,
    }


def operations(to: dict[str, Recipients]) -> dict[str, Any]:
    ops = {
        f"sendTo{role.title()}": operation(
            "send",
            [k for k, (roles, _) in to.items() if role in roles and k not in CONTROL],
            f"Messages for a {role}: every open socket of that user receives each one.",
        )
        for role in ROLES
    }
    ops["sendResyncRequired"] = operation(
        "send", ["resync_required"], "Told when messages for this user may have been lost."
    )
    ops["receivePing"] = operation("receive", ["ping"], "A client's ping; answered with pong.")
    ops["receivePing"]["reply"] = {
        "channel": {"$ref": f"#/channels/{CHANNEL}"},
        "messages": [{"$ref": f"#/channels/{CHANNEL}/messages/pong"}],
    }
    return ops


def document() -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the gateway's WebSocket."""
    names, components = schemas()
    to = recipients()
    messages = {k: message(k, names[k], to.get(k)) for k in [*to, "ping"]}
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Weelo WebSocket",
            "version": "1",
            "description": DESCRIPTION,
            "tags": [{"name": r, "description": f"received by a {r}"} for r in ROLES],
        },
        "defaultContentType": "application/json",
        "servers": {
            "gateway": {
                "host": "{host}",
                "protocol": "ws",
                "description": "The gateway (`wss` behind the load balancer).",
                "variables": {"host": {"default": "127.0.0.1:8000"}},
                "security": [
                    {"$ref": f"#/components/securitySchemes/{s}"} for s in ("bearer", "query")
                ],
            }
        },
        "channels": {
            CHANNEL: {
                "address": PATH,
                "title": "The user's socket",
                "servers": [{"$ref": "#/servers/gateway"}],
                "messages": {k: {"$ref": f"#/components/messages/{k}"} for k in messages},
                "bindings": {"ws": channel_bindings()},
                "x-close-codes": [c._asdict() for c in CLOSE_CODES],
            }
        },
        "operations": operations(to),
        "components": {
            "schemas": components,
            "messages": messages,
            "securitySchemes": security_schemes(),
        },
    }


def asyncapi_route() -> Route:
    """`GET /asyncapi.json`: the document, made once when the app is built."""
    body = json.dumps(document(), indent=2).encode()

    async def serve(_request: Request) -> Response:
        return Response(body, media_type="application/json")

    return Route(PUBLIC_PATH, serve, methods=["GET"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.gateway.asyncapi")
    parser.add_argument("--markdown", action="store_true", help="print docs/websocket.md")
    args = parser.parse_args(argv)
    if args.markdown:
        from services.gateway.asyncapi_markdown import render

        print(render(document()), end="")
    else:
        print(json.dumps(document(), indent=2))


if __name__ == "__main__":
    main()
