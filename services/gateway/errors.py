"""Errors at the HTTP edge: one error type, the failure-code table, and the one exception-handler
table that turns every error into the contract's body `{"error": {"code", "message", ...}}`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec
import psycopg
import redis.exceptions
import structlog
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from libs.events.bus import CommandTimeout, CommandUnsettled
from libs.events.commands import Failure

log = structlog.get_logger(__name__)


class ChangedButUnread(Exception):
    """The request's change was made, but reading its result back kept failing: not a 503
    ("nothing was changed"); the keyed retry gets the result."""


class ApiError(Exception):
    """An error the API answers with: status, contract code, message and extra fields."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        extra: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message
        self.extra = dict(extra or {})
        self.headers = dict(headers or {})


def unauthorized() -> ApiError:
    return ApiError(
        401,
        "unauthorized",
        "A valid bearer token is required",
        headers={"WWW-Authenticate": "Bearer"},
    )


def forbidden(message: str = "Not allowed for this role") -> ApiError:
    return ApiError(403, "forbidden", message)


def not_found(message: str = "Not found") -> ApiError:
    return ApiError(404, "not_found", message)


def invalid(field: str, problem: str) -> ApiError:
    details = [{"field": field, "problem": problem}]
    return ApiError(422, "invalid_request", "The request is invalid", extra={"details": details})


def unavailable() -> ApiError:
    return ApiError(503, "unavailable", "A dependency is unavailable; nothing was changed")


# Status of each failure code a service may reply with.
FAILURE_STATUS: dict[str, int] = {
    "not_found": 404,
    "forbidden": 403,
    "not_notified": 403,
    "active_broadcast_exists": 409,
    "no_longer_available": 409,
    "request_cancelled": 409,
    "request_expired": 409,
    "vehicle_taken": 409,
    "driver_taken": 409,
    "driver_offline": 409,
    "driver_busy": 409,
    "vehicle_busy": 409,
    "vehicle_type_mismatch": 409,
    "request_in_flight": 409,
    "invalid_request": 422,
    "idempotency_key_reused": 422,
    "unavailable": 503,
}

# Codes whose message the contract fixes word for word.
CONTRACT_MESSAGES: dict[str, str] = {
    "active_broadcast_exists": "Request already in progress. Cancel it first.",
    "no_longer_available": "No longer available",
    "request_cancelled": "Request cancelled",
    "request_expired": "Request expired",
}


def refused(failure: Failure) -> ApiError:
    """The API error for a command a service refused."""
    status = FAILURE_STATUS.get(failure.code)
    if status is None:
        log.error("unknown_failure_code", code=failure.code, message=failure.message)
        return ApiError(500, "internal", "Internal error")
    message = CONTRACT_MESSAGES.get(failure.code, failure.message)
    return ApiError(status, failure.code, message, extra=failure.details)


def error_response(error: ApiError) -> Response:
    body = {**error.extra, "code": error.code, "message": error.message}
    return Response(
        msgspec.json.encode({"error": body}),
        status_code=error.status,
        headers=error.headers,
        media_type="application/json",
    )


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


async def _api_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc)


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return error_response(ApiError(exc.status_code, code, exc.detail, headers=exc.headers))


async def _unavailable(_request: Request, exc: Exception) -> Response:
    log.warning("dependency_unavailable", error=repr(exc))
    return error_response(unavailable())


async def _outcome_unknown(_request: Request, exc: Exception) -> Response:
    """The change may have been made (or was, and its result could not be read): a 503 would
    say it was not. The keyed retry answers the outcome."""
    log.error("answered_without_outcome", error=repr(exc))
    message = "The outcome could not be confirmed; retry with the same Idempotency-Key to get it"
    return error_response(ApiError(500, "internal", message))


async def _internal(_request: Request, exc: Exception) -> Response:
    log.error("unhandled_error", error=repr(exc), exc_info=exc)
    return error_response(ApiError(500, "internal", "Internal error"))


ExceptionHandler = Callable[[Request, Exception], Awaitable[Response]]

# The one place where exceptions become responses.
EXCEPTION_HANDLERS: dict[Any, ExceptionHandler] = {
    ApiError: _api_error,
    HTTPException: _http_error,
    CommandTimeout: _unavailable,
    CommandUnsettled: _outcome_unknown,
    ChangedButUnread: _outcome_unknown,
    redis.exceptions.ConnectionError: _unavailable,
    redis.exceptions.TimeoutError: _unavailable,
    psycopg.OperationalError: _unavailable,
    Exception: _internal,
}


async def render(request: Request, exc: Exception) -> Response:
    """The response the table gives `exc` (used where an error must be seen as a response)."""
    for cls in type(exc).__mro__:
        handler = EXCEPTION_HANDLERS.get(cls)
        if handler is not None:
            return await handler(request, exc)
    raise exc
