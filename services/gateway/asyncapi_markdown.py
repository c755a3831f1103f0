"""Renders `docs/websocket.md` from the AsyncAPI document (`asyncapi.py`): the socket, its close
codes, then one section per message with who receives it, its data fields and an example."""

from __future__ import annotations

import json
from typing import Any

from services.gateway.asyncapi_socket import CHANNEL

HEADER = """\
# WebSocket reference

Generated from the AsyncAPI 3.0 document the gateway serves at `GET /asyncapi.json`
(`services/gateway/asyncapi.py`, built from the frame types in `libs/readmodel/frames.py`) by
`python -m services.gateway.asyncapi --markdown > docs/websocket.md`; a test fails when this file
and the document differ. Do not edit by hand.
"""

_SIMPLE = {"string": "string", "integer": "integer", "number": "number", "boolean": "boolean"}


def type_name(schema: dict[str, Any]) -> str:
    """A JSON Schema as a short type: `string`, `string | null`, [`Location`](#location)."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[`{name}`](#{name.lower()})"
    if "anyOf" in schema:
        return " or ".join(type_name(s) for s in schema["anyOf"])
    if "enum" in schema:
        return " or ".join(f"`{json.dumps(v)}`" for v in schema["enum"])
    kind = schema.get("type")
    if kind == "object" and "additionalProperties" in schema:
        return f"object of {type_name(schema['additionalProperties'])}"
    if kind == "array":
        return f"list of {type_name(schema['items'])}"
    return "null" if kind == "null" else _SIMPLE.get(kind or "", "any")


def _note(schema: dict[str, Any]) -> str:
    parts = [schema.get("description", "")]
    if "anyOf" in schema:
        parts += [s["description"] for s in schema["anyOf"] if "description" in s]
    if "default" in schema:
        parts.append(f"default `{json.dumps(schema['default'])}`")
    return "; ".join(p for p in parts if p).replace("|", "\\|")


def fields_table(schema: dict[str, Any]) -> str:
    rows = ["| field | type | notes |", "|---|---|---|"]
    for name, prop in schema.get("properties", {}).items():
        rows.append(f"| `{name}` | {type_name(prop)} | {_note(prop)} |")
    return "\n".join(rows) + "\n"


def close_codes(channel: dict[str, Any]) -> str:
    rows = ["| code | meaning | when | what the client does |", "|---|---|---|---|"]
    for c in channel["x-close-codes"]:
        rows.append(f"| {c['code']} | {c['reason']} | {c['when']} | {c['then']} |")
    return "## Close codes\n\n" + "\n".join(rows) + "\n"


def connecting(doc: dict[str, Any], channel: dict[str, Any]) -> str:
    ws = channel["bindings"]["ws"]
    return (
        f"## Connecting: `{ws['method']} {channel['address']}`\n\n{doc['info']['description']}\n\n"
        f"Query parameters:\n\n{fields_table(ws['query'])}\n"
        f"Headers:\n\n{fields_table(ws['headers'])}"
    )


def _direction(doc: dict[str, Any], kind: str) -> str:
    """Who sends `kind`: the gateway for a message it sends or replies with, else the client."""
    ref = f"#/channels/{CHANNEL}/messages/{kind}"
    for op in doc["operations"].values():
        sent = op["action"] == "send"
        if any(m["$ref"] == ref for m in op["messages"]):
            return "server → client" if sent else "client → server"
        if any(m["$ref"] == ref for m in op.get("reply", {}).get("messages", ())):
            return "client → server" if sent else "server → client, the reply"
    raise ValueError(f"no operation carries {kind}")


def overview(doc: dict[str, Any], messages: dict[str, Any]) -> str:
    rows = ["| type | direction | to (from) |", "|---|---|---|"]
    for kind, m in messages.items():
        to = m["x-to"] if "x-to" in m else f"({m['x-sent-by']})"
        rows.append(f"| [`{kind}`](#{kind}) | {_direction(doc, kind)} | {to} |")
    return "## Messages\n\n" + "\n".join(rows) + "\n"


def message_section(doc: dict[str, Any], kind: str, m: dict[str, Any]) -> str:
    schemas = doc["components"]["schemas"]
    frame = schemas[m["payload"]["$ref"].rsplit("/", 1)[-1]]
    data = frame["properties"].get("data")
    lines = [f"### `{kind}`\n"]
    if "summary" in m:
        lines.append(m["summary"] + "\n")
    who = f"**To:** {m['x-to']}" if "x-to" in m else f"**From:** {m['x-sent-by']}"
    lines.append(f"{who}; {_direction(doc, kind)}.\n")
    if data is not None:
        name = data["$ref"].rsplit("/", 1)[-1]
        lines.append(f"`data` (`{name}`):\n\n{fields_table(schemas[name])}")
    example = json.dumps(m["examples"][0]["payload"], indent=2)
    lines.append(f"Example:\n\n```json\n{example}\n```\n")
    return "\n".join(lines)


def nested(doc: dict[str, Any]) -> str:
    """The objects the frames' data hold (the type links point here)."""
    schemas = doc["components"]["schemas"]
    data = {
        s["properties"]["data"]["$ref"]
        for s in schemas.values()
        if "data" in s.get("properties", {})
    }
    parts = ["## Objects\n"]
    for name, schema in schemas.items():
        props = schema.get("properties", {})
        if props and "type" not in props and f"#/components/schemas/{name}" not in data:
            note = f"{schema['description']}\n\n" if "description" in schema else ""
            parts.append(f"### {name}\n\n{note}{fields_table(schema)}")
    return "\n".join(parts)


def render(doc: dict[str, Any]) -> str:
    channel = next(iter(doc["channels"].values()))
    messages = doc["components"]["messages"]
    sections = [message_section(doc, k, m) for k, m in messages.items()]
    return "\n".join(
        [
            HEADER,
            connecting(doc, channel),
            close_codes(channel),
            overview(doc, messages),
            *sections,
            nested(doc),
        ]
    )
