"""What the AsyncAPI document says about the socket itself: how to open it, how it resumes, and
the codes the gateway closes it with (`realtime/connection.py`, `realtime/endpoint.py`,
`libs/runtime/service.py`)."""

from __future__ import annotations

from typing import Annotated, Any, NamedTuple

import msgspec

from services.gateway.asyncapi_frames import EVENT_ID_PATTERN
from services.gateway.realtime.connection import LAGGING_CLOSE, REPLACED_CLOSE, TRY_AGAIN_CLOSE
from services.gateway.realtime.hub import HubConfig

CHANNEL = "socket"
MAX_CLIENT_FRAME = 4096  # uvicorn's `ws_max_size` (libs/runtime/service.py)

DESCRIPTION = """\
`GET /v1/ws` upgrades to a WebSocket; the access token comes in the `Authorization: Bearer`
header or as `?token=`. A missing, expired or otherwise bad token is refused before the upgrade
with HTTP 401 and the API's error body; past the rate limits the answer is 429 `rate_limited`, and
503 `unavailable` while Redis cannot be reached. No socket is opened then.

Every message for a user reaches every open socket of that user, whichever gateway instance
holds it, in the order the events happened for any one broadcast. Server frames are JSON text:
`{"type", "eventId", "at", "data"}`; `eventId` grows with every message of the user.

Reconnecting with `?lastEventId=<the last eventId received>` first replays everything for that
user after it (at least the last 200 messages or 15 minutes), then goes live. If that id is older
than what is kept, or no message of this user ever had it (malformed, or newer than the newest),
the first frame is `{"type": "resync_required"}` and live frames follow: reload the state over
HTTP. `resync_required` also comes at any time when Redis lost messages. Without `lastEventId` a
socket starts live.

The client may send `{"type": "ping"}` and gets `{"type": "pong"}`; anything else it sends is
ignored. Clients derive countdowns from `expiresAt`: the server sends no countdown ticks."""


class SocketQuery(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """Query parameters of the upgrade request."""

    token: Annotated[
        str | msgspec.UnsetType,
        msgspec.Meta(description="the access token, where no header can be set"),
    ] = msgspec.UNSET
    last_event_id: Annotated[
        str | msgspec.UnsetType,
        msgspec.Meta(description=f"replay what came after this `eventId` (`{EVENT_ID_PATTERN}`)"),
    ] = msgspec.UNSET


class SocketHeaders(msgspec.Struct, frozen=True, kw_only=True):
    """Headers of the upgrade request."""

    authorization: (
        Annotated[str, msgspec.Meta(pattern="^Bearer .+$", description="`Bearer <access token>`")]
        | msgspec.UnsetType
    ) = msgspec.field(default=msgspec.UNSET, name="Authorization")


def channel_bindings() -> dict[str, Any]:
    """The WebSockets binding of the channel: the upgrade's method, query and headers."""
    _, parts = msgspec.json.schema_components((SocketQuery, SocketHeaders))
    return {
        "method": "GET",
        "query": parts["SocketQuery"],
        "headers": parts["SocketHeaders"],
        "bindingVersion": "0.1.0",
    }


def security_schemes() -> dict[str, Any]:
    return {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "An access token: the HS256 JWT every `/v1` call takes (`weelo token`"
            " makes one locally; `POST /v1/auth/refresh` renews it).",
        },
        "query": {
            "type": "httpApiKey",
            "name": "token",
            "in": "query",
            "description": "The same access token as `?token=`, for clients that set no header.",
        },
    }


class CloseCode(NamedTuple):
    code: int
    reason: str
    when: str
    then: str


_MAX_SOCKETS = HubConfig().max_sockets_per_user

RECONNECT = "reconnect with `lastEventId`"

CLOSE_CODES = (
    CloseCode(
        1008,
        "policy violation",
        "the token was refused and the server could not answer the upgrade with HTTP 401"
        " (it normally does)",
        "get a new token",
    ),
    CloseCode(
        1009,
        "message too big",
        f"the client sent a message over {MAX_CLIENT_FRAME // 1024} KiB",
        "send only `ping`",
    ),
    CloseCode(
        1011,
        "keepalive ping timeout",
        "the client answered no WebSocket protocol ping within 20 s (the server pings every 20 s)",
        RECONNECT,
    ),
    CloseCode(
        1012,
        "service restart",
        "the gateway instance is stopping (a deploy, a scale-in)",
        RECONNECT,
    ),
    CloseCode(
        TRY_AGAIN_CLOSE,
        "try again later",
        "the replay could not be read (Redis unreachable)",
        RECONNECT + ", after a pause",
    ),
    CloseCode(
        LAGGING_CLOSE,
        "too slow",
        "the client read too slowly: too many frames waited for it",
        RECONNECT,
    ),
    CloseCode(
        REPLACED_CLOSE,
        "replaced",
        f"the same user opened more than {_MAX_SOCKETS} sockets on one gateway instance:"
        " the oldest is closed",
        "do not reopen it on its own",
    ),
)
