"""Errors at the HTTP edge: one error type, its constructors (a service's failure code gets its
status and message from `libs/events/failures.py`), and the one exception-handler table that
turns every error into the contract's body `{"error": {"code", "message", ...}}`."""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import Any

import msgspec
import psycopg
import redis.exceptions
import structlog
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from libs.events.client import CommandTimeout, CommandUnsettled
from libs.events.commands import Failure
from libs.events.failures import REFUSALS, FailureCode, message_for
from libs.events.handlers import Handlers

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


def unauthorized(reason: str | None = None) -> ApiError:
    """401 with the contract's code and message; `reason` (`services/gateway/auth.py`) says what
    was wrong with the token, never what it was."""
    return ApiError(
        401,
        "unauthorized",
        "A valid bearer token is required",
        extra={"reason": reason} if reason else None,
        headers={"WWW-Authenticate": "Bearer"},
    )


def failure_error(
    code: FailureCode, message: str | None = None, extra: Mapping[str, Any] | None = None
) -> ApiError:
    """The API error for failure `code` (`libs/events/failures.py`): its status, and its
    message (the contract's where it fixes one)."""
    return ApiError(REFUSALS[code].status, code, message_for(code, message), extra=extra)


def forbidden(message: str = "Not allowed for this role") -> ApiError:
    return failure_error("forbidden", message)


def not_found(message: str = "Not found") -> ApiError:
    return failure_error("not_found", message)


def invalid(field: str, problem: str) -> ApiError:
    details = [{"field": field, "problem": problem}]
    return ApiError(422, "invalid_request", "The request is invalid", extra={"details": details})


def unavailable() -> ApiError:
    return failure_error("unavailable")


def internal(message: str = "Internal error") -> ApiError:
    return ApiError(500, "internal", message)


def refused(failure: Failure) -> ApiError:
    """The API error for a command a service refused."""
    return failure_error(failure.code, failure.message, failure.details)


def error_response(error: ApiError) -> Response:
    body = {**error.extra, "code": error.code, "message": error.message}
    return Response(
        msgspec.json.encode({"error": body}),
        status_code=error.status,
        headers=error.headers,
        media_type="application/json",
    )


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


async def _api_error(_request: Request, exc: ApiError) -> Response:
    return error_response(exc)


async def _http_error(_request: Request, exc: HTTPException) -> Response:
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
    return error_response(internal(message))


async def _internal(_request: Request, exc: Exception) -> Response:
    log.error("unhandled_error", error=repr(exc), exc_info=exc)
    return error_response(internal())


# The one place where exceptions become responses: Starlette (and `render`) calls the handler of
# the nearest class in the exception's MRO.
EXCEPTION_HANDLERS = (
    Handlers[Exception, Request, Awaitable[Response]]()
    .on(ApiError, _api_error)
    .on(HTTPException, _http_error)
    .on(CommandTimeout, _unavailable)
    .on(CommandUnsettled, _outcome_unknown)
    .on(ChangedButUnread, _outcome_unknown)
    .on(redis.exceptions.ConnectionError, _unavailable)
    .on(redis.exceptions.TimeoutError, _unavailable)
    .on(psycopg.OperationalError, _unavailable)
    .on(Exception, _internal)
)


async def render(request: Request, exc: Exception) -> Response:
    """The response the table gives `exc` (used where an error must be seen as a response)."""
    for cls in type(exc).__mro__:
        handler = EXCEPTION_HANDLERS.get(cls)
        if handler is not None:
            return await handler(request, exc)
    raise exc
