"""Answers a service's HTTP server gives before any app sees the request, with the contract's
error body (`{"error": {"code": ..., "message": ...}}`) and `Connection: close`."""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus

import msgspec


@dataclass(frozen=True)
class Refusal:
    status: HTTPStatus
    code: str
    message: str


URI_TOO_LONG = Refusal(HTTPStatus.REQUEST_URI_TOO_LONG, "uri_too_long", "Request target too long")
HEADERS_TOO_LARGE = Refusal(
    HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "headers_too_large", "Request headers too large"
)
HEAD_TIMEOUT = Refusal(
    HTTPStatus.REQUEST_TIMEOUT, "request_timeout", "Request headers not received in time"
)
BAD_HANDSHAKE = Refusal(
    HTTPStatus.BAD_REQUEST, "bad_request", "Not a valid WebSocket handshake request"
)


def refusal_bytes(refusal: Refusal, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """The whole HTTP/1.1 response for `refusal`, after the server's default headers."""
    body = msgspec.json.encode({"error": {"code": refusal.code, "message": refusal.message}})
    status = f"HTTP/1.1 {refusal.status.value} {refusal.status.phrase}\r\n".encode()
    fields = [name + b": " + value + b"\r\n" for name, value in default_headers]
    fields += [
        b"content-type: application/json\r\n",
        b"content-length: %d\r\n" % len(body),
        b"connection: close\r\n",
    ]
    return b"".join([status, *fields, b"\r\n", body])
