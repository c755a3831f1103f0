"""Renders `docs/events.md` from the catalogue, so the document cannot drift from the code."""

from __future__ import annotations

import msgspec

from libs.events.catalogue import EVENT_TYPES, Envelope, Event
from libs.events.streams import CATEGORIES

_HEADER = """# Events

Generated from `libs/events/catalogue.py` by `make docs` (`weelo docs events`); a test fails
when this file and the catalogue differ. Do not edit by hand.

What a client receives on its WebSocket is in [websocket.md](websocket.md) (`GET /asyncapi.json`).

## Streams

Every key below starts with the deployment's `REDIS_KEY_PREFIX` (default `weelo:`).

| Redis stream | what is on it |
|---|---|
{streams}| `<prefix>dead-letter` | entries a consumer group gave up on: `stream`, `group`, `entryId`, `deliveries`, `error`, `consumer`, `firstFailure` (ISO 8601), and the original fields as `field:<name>` |

An event of the event-store stream `<category>-<id>` (for example `broadcast-7c1e…`) is
published to `<prefix>{{bus}}:events:<category>`. Each entry has one field, `envelope`: the JSON
object below. Delivery is at least once: dedupe by `eventId`, or by `streamId` and `version`.
An outside consumer reads with its own group:

```
XGROUP CREATE weelo:{{bus}}:events:broadcast my-group $ MKSTREAM
XREADGROUP GROUP my-group my-consumer COUNT 100 BLOCK 5000 STREAMS weelo:{{bus}}:events:broadcast >
XACK weelo:{{bus}}:events:broadcast my-group <entry id>
```

Entries stay on a stream until every group has acknowledged them and they are older than one
minute; a group that stops acknowledging holds entries back rather than losing them. A consumer
idle for 5 minutes with nothing pending is removed from its group (its next read recreates it).
An entry with a `replayFor` field was put back from the dead-letter stream (`weelo ops
dead-letters --replay`) for the group it names: acknowledge it without acting on it in any other
group.

## Envelope

{envelope}
## Event types

The envelope's `event` is one of these, told apart by `type`. Fields are added, never changed
or removed; a field added later has a default.
"""


_SIMPLE = {
    msgspec.inspect.StrType: "string",
    msgspec.inspect.IntType: "integer",
    msgspec.inspect.FloatType: "number",
    msgspec.inspect.BoolType: "boolean",
    msgspec.inspect.DateTimeType: "time (ISO 8601, UTC)",
    msgspec.inspect.NoneType: "null",
}


def _type_name(info: msgspec.inspect.Type) -> str:
    if type(info) in _SIMPLE:
        return _SIMPLE[type(info)]
    match info:
        case msgspec.inspect.LiteralType(values=values):
            return " \\| ".join(f"`{v}`" for v in values)
        case msgspec.inspect.UnionType(types=types) if len(types) > 3:
            return "one of the event types below"
        case msgspec.inspect.UnionType(types=types):
            return " or ".join(_type_name(t) for t in types)
        case (
            msgspec.inspect.VarTupleType(item_type=item) | msgspec.inspect.ListType(item_type=item)
        ):
            return f"list of {_type_name(item)}"
        case msgspec.inspect.StructType(cls=cls):
            return f"`{cls.__name__}` object"
    return type(info).__name__


def _fields_table(cls: type[msgspec.Struct]) -> str:
    info = msgspec.inspect.type_info(cls)
    if not isinstance(info, msgspec.inspect.StructType):
        raise TypeError(f"{cls.__name__} is not described as a struct: {info!r}")
    rows = ["| field | type | required |", "|---|---|---|"]
    if info.tag_field:
        rows.append(f"| `{info.tag_field}` | `{info.tag}` | yes |")
    for f in info.fields:
        rows.append(
            f"| `{f.encode_name}` | {_type_name(f.type)} | {'yes' if f.required else 'no'} |"
        )
    return "\n".join(rows) + "\n"


def _event_section(cls: type[Event]) -> str:
    tag = cls.__struct_config__.tag
    doc = (cls.__doc__ or "").strip()
    return f"### `{tag}`\n\n{doc}\n\n{_fields_table(cls)}"


def _nested_types() -> str:
    from libs.events.catalogue import AcceptedSlot, Location, TruckSlot

    parts = ["## Nested objects\n"]
    for cls in (Location, TruckSlot, AcceptedSlot):
        parts.append(f"### `{cls.__name__}`\n\n{_fields_table(cls)}")
    return "\n".join(parts)


def render_events_doc() -> str:
    streams = "".join(
        f"| `<prefix>{{bus}}:events:{c}` | events of `{c}-…` streams |\n" for c in CATEGORIES
    )
    header = _HEADER.format(streams=streams, envelope=_fields_table(Envelope))
    sections = [_event_section(cls) for cls in EVENT_TYPES]
    return header + "\n" + "\n".join(sections) + "\n" + _nested_types()
