"""The API on one screen: every route, the roles it admits and its handler."""

from __future__ import annotations

from collections.abc import Sequence

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from libs.runtime.tokens import ROLES, Role
from services.gateway import accepts, assignments, broadcasts, fleet
from services.gateway.auth import refresh_principal, token_pair
from services.gateway.bodies import RefreshBody, decode
from services.gateway.http import (
    Deps,
    Endpoint,
    Handler,
    endpoint,
    json_response,
    rate_limit,
    read_body,
)
from services.gateway.idempotency import idempotent

CUSTOMER: Sequence[Role] = ("customer",)
TRANSPORTER: Sequence[Role] = ("transporter",)
DRIVER: Sequence[Role] = ("driver",)
CUSTOMER_OR_TRANSPORTER: Sequence[Role] = ("customer", "transporter")

VEHICLE = "/v1/transporters/me/vehicles/{vehicle_id}"

API: tuple[tuple[str, str, Sequence[Role], Handler], ...] = (
    ("PUT", VEHICLE, TRANSPORTER, fleet.put_vehicle),
    ("DELETE", VEHICLE, TRANSPORTER, fleet.delete_vehicle),
    ("PUT", "/v1/transporters/me/drivers/{driver_id}", TRANSPORTER, fleet.put_driver),
    ("GET", "/v1/transporters/me/drivers", TRANSPORTER, fleet.list_drivers),
    ("POST", "/v1/broadcasts", CUSTOMER, broadcasts.create_broadcast),
    ("GET", "/v1/broadcasts/{broadcast_id}", CUSTOMER_OR_TRANSPORTER, broadcasts.get_broadcast),
    ("GET", "/v1/customers/me/broadcasts/active", CUSTOMER, broadcasts.active_broadcast),
    ("GET", "/v1/transporters/me/broadcasts", TRANSPORTER, broadcasts.notified_broadcasts),
    ("POST", "/v1/broadcasts/{broadcast_id}/cancel", CUSTOMER, broadcasts.cancel_broadcast),
    ("POST", "/v1/broadcasts/{broadcast_id}/accept", TRANSPORTER, accepts.accept_broadcast),
    (
        "POST",
        "/v1/truck-requests/{truck_request_id}/accept",
        TRANSPORTER,
        accepts.accept_truck_request,
    ),
    ("GET", "/v1/assignments/{assignment_id}", ROLES, assignments.get_assignment),
    ("POST", "/v1/assignments/{assignment_id}/driver", TRANSPORTER, assignments.assign_driver),
    ("GET", "/v1/transporters/me/assignments", TRANSPORTER, assignments.transporter_assignments),
    ("GET", "/v1/drivers/me/assignment", DRIVER, assignments.driver_assignment),
    ("PUT", "/v1/drivers/me/availability", DRIVER, assignments.set_availability),
    ("POST", "/v1/drivers/me/heartbeat", DRIVER, assignments.heartbeat),
)


def _plain(handler: Handler) -> Handler:
    return handler


def api_routes(deps: Deps) -> list[Route]:
    """Every /v1 route, one per path so a 405 lists every method; POSTs honour Idempotency-Key."""
    by_path: dict[str, dict[str, Endpoint]] = {}
    for method, path, roles, handler in API:
        wrap = idempotent if method == "POST" else _plain
        by_path.setdefault(path, {})[method] = endpoint(deps, roles, handler, wrap=wrap)
    routes = [Route("/v1/auth/refresh", refresh_endpoint(deps), methods=["POST"])]
    for path, endpoints in by_path.items():
        routes.append(Route(path, _by_method(endpoints), methods=list(endpoints)))
    return routes


def _by_method(endpoints: dict[str, Endpoint]) -> Endpoint:
    async def dispatch(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await endpoints[method](request)

    return dispatch


def refresh_endpoint(deps: Deps) -> Endpoint:
    """`POST /v1/auth/refresh`: a refresh token buys a new token pair (no bearer needed)."""

    async def refresh(request: Request) -> Response:
        body = decode(await read_body(request, deps.config.max_body_bytes), RefreshBody)
        principal = refresh_principal(body.refresh_token, deps.keys)
        await rate_limit(deps, f"{principal.role}:{principal.sub}")
        access, refresh_token = token_pair(principal, deps.keys)
        return json_response({"accessToken": access, "refreshToken": refresh_token})

    return refresh
