"""Every error the gateway answers, for the API document (`openapi.py`): the contract's error
body as msgspec types, each `code` with its status and message, taken from the code that
raises it (`libs/events/failures.py` for the services' refusals, the gateway's own
constructors for the edge), and which codes one operation can answer."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from msgspec import UNSET, Struct, UnsetType

from libs.events.failures import REFUSALS, FailureCode
from libs.runtime import refusals as server
from services.gateway.config import GatewayConfig
from services.gateway.errors import ApiError, internal, invalid, unauthorized
from services.gateway.http import too_large
from services.gateway.idempotency_rows import _IN_FLIGHT, _REUSED
from services.gateway.ratelimit import rate_limited


class Problem(Struct, frozen=True, kw_only=True):
    """What is wrong with one field of the request (`body` for the body as a whole)."""

    field: str
    problem: str


class ErrorFields(Struct, frozen=True, kw_only=True, rename="camel"):
    """The error: its `code` (the one field a client should branch on), a message for people,
    and the details some codes add: `details` (422 `invalid_request`), `broadcastId` (409
    `active_broadcast_exists`), `available` (409 `no_longer_available`: open slots of that type
    left), `reason` (401 `unauthorized`: what was wrong with the token, never the token). Other
    fields may be added; a client ignores those it does not know."""

    code: str
    message: str
    details: list[Problem] | UnsetType = UNSET
    broadcast_id: str | UnsetType = UNSET
    available: int | UnsetType = UNSET
    reason: str | UnsetType = UNSET


class ErrorBody(Struct, frozen=True, kw_only=True):
    """Every error body of the API (CONTRACT.md section 2)."""

    error: ErrorFields


@dataclass(frozen=True)
class ErrorCode:
    status: int
    message: str


def _from(*errors: ApiError) -> dict[str, ErrorCode]:
    return {e.code: ErrorCode(e.status, e.message) for e in errors}


_LIMIT = GatewayConfig().max_body_bytes
# The gateway's own answers, made by the constructors that make them.
EDGE: Final[dict[str, ErrorCode]] = {
    **_from(
        unauthorized(),
        too_large(_LIMIT),
        invalid("field", "problem"),
        ApiError(*_REUSED),
        ApiError(*_IN_FLIGHT),
        rate_limited(1.0),
        internal(),
    ),
    # Starlette's, through `errors._http_error`: a method the path does not have.
    "method_not_allowed": ErrorCode(405, "Method Not Allowed"),
}
# Answered by the HTTP server itself, before any route (libs/runtime/refusals.py).
SERVER: Final[dict[str, ErrorCode]] = {
    r.code: ErrorCode(int(r.status), r.message)
    for r in (server.URI_TOO_LONG, server.HEADERS_TOO_LARGE, server.HEAD_TIMEOUT,
              server.BAD_HANDSHAKE)
}  # fmt: skip
REFUSED: Final[dict[str, ErrorCode]] = {
    code: ErrorCode(r.status, r.message) for code, r in REFUSALS.items()
}
ERROR_CODES: Final[dict[str, ErrorCode]] = {**REFUSED, **EDGE, **SERVER}


@dataclass(frozen=True)
class Answers:
    """What decides the errors of one `/v1` operation."""

    path: str
    role_checked: bool  # admits fewer than every role: 403 `forbidden`
    body: bool  # decodes a request body: 422 `invalid_request`
    refusals: tuple[FailureCode, ...]  # the handler's and its command's own
    idempotent: bool  # behind `Idempotency-Key` (every POST of the route table)
    uses_dependencies: bool = True  # PostgreSQL, Redis or a service: 503 `unavailable`


def operation_codes(answers: Answers) -> list[str]:
    """Every error code the operation can answer, in the table's order."""
    codes = {"unauthorized", "payload_too_large", "rate_limited", "internal", *answers.refusals}
    if answers.role_checked:
        codes.add("forbidden")
    if "{" in answers.path:
        codes.add("not_found")  # a malformed id names nothing
    if answers.body:
        codes.add("invalid_request")
    if answers.idempotent:
        codes |= {"invalid_request", "idempotency_key_reused", "request_in_flight"}
    if answers.uses_dependencies:
        codes.add("unavailable")
    return [code for code in ERROR_CODES if code in codes]


def by_status(codes: Iterable[str]) -> dict[int, list[str]]:
    """`codes` grouped by their status, statuses in order."""
    grouped: dict[int, list[str]] = {}
    for code in codes:
        grouped.setdefault(ERROR_CODES[code].status, []).append(code)
    return dict(sorted(grouped.items()))
