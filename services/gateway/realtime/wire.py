"""The frames as the gateway sends them (CONTRACT.md section 7)."""

from __future__ import annotations


def wire_text(event_id: str, stored: bytes) -> str:
    """The frame as sent: `{"eventId": ..., "type", "at", "data"}` (stored starts with `{`)."""
    return '{"eventId":"' + event_id + '",' + stored[1:].decode()


PONG = '{"type":"pong"}'
RESYNC_REQUIRED = '{"type":"resync_required"}'
