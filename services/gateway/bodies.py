"""Request bodies: msgspec structs with their constraints, decoded once, errors as `details`."""

from __future__ import annotations

import re
from typing import Annotated, TypeVar

import msgspec
from msgspec import Meta, Struct

from services.gateway.errors import invalid

Latitude = Annotated[float, Meta(ge=-90.0, le=90.0)]
Longitude = Annotated[float, Meta(ge=-180.0, le=180.0)]
VehicleType = Annotated[str, Meta(pattern=r"^[a-z0-9_]{1,32}$")]
Id = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
# PostgreSQL text cannot hold NUL (U+0000): free text refuses it here, at the edge, as a 422.
NO_NUL = r"^[^\x00]*$"
NUL_PROBLEM = "must not contain NUL (\\u0000) characters"
Text = Annotated[str, Meta(max_length=500, pattern=NO_NUL)]


class Body(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, rename="camel"):
    """Base of every request body: unknown fields are refused."""


class LocationBody(Body, frozen=True, kw_only=True):
    lat: Latitude
    lng: Longitude
    address: Text | None = None


class TruckBody(Body, frozen=True, kw_only=True):
    vehicle_type: VehicleType
    quantity: Annotated[int, Meta(ge=1, le=20)]


class CreateBroadcastBody(Body, frozen=True, kw_only=True):
    pickup: LocationBody
    drop: LocationBody
    trucks: Annotated[tuple[TruckBody, ...], Meta(min_length=1, max_length=10)]
    note: Text | None = None


class CancelBody(Body, frozen=True, kw_only=True):
    reason: Text | None = None


class AcceptBody(Body, frozen=True, kw_only=True):
    vehicle_type: VehicleType
    quantity: Annotated[int, Meta(ge=1, le=20)]


class EmptyBody(Body, frozen=True, kw_only=True):
    pass


class VehicleBody(Body, frozen=True, kw_only=True):
    vehicle_type: VehicleType
    lat: Latitude
    lng: Longitude


class DriverBody(Body, frozen=True, kw_only=True):
    name: Annotated[str, Meta(min_length=1, max_length=100, pattern=NO_NUL)]
    phone: Annotated[str, Meta(min_length=1, max_length=32, pattern=NO_NUL)]


class AssignDriverBody(Body, frozen=True, kw_only=True):
    driver_id: Id
    vehicle_id: Id


class AvailabilityBody(Body, frozen=True, kw_only=True):
    online: bool


class RefreshBody(Body, frozen=True, kw_only=True):
    refresh_token: Annotated[str, Meta(min_length=1, max_length=4096, pattern=NO_NUL)]


B = TypeVar("B", bound=Body)

_AT = re.compile(r"^(?P<problem>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_NAMED = re.compile(r"(?:missing required|contains unknown) field `(?P<name>[^`]+)`")


def decode(raw: bytes, kind: type[B], *, empty_ok: bool = False) -> B:
    """`raw` as a `kind`; 422 `invalid_request` naming the field and the problem otherwise."""
    if empty_ok and not raw.strip():
        raw = b"{}"
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError as e:
        raise invalid(*field_problem(str(e))) from e
    except msgspec.DecodeError as e:
        raise invalid("body", f"not valid JSON: {e}") from e
    except UnicodeDecodeError as e:  # msgspec raises it for a string that is not UTF-8
        raise invalid("body", "not valid JSON: a string is not valid UTF-8") from e
    except RecursionError as e:
        raise invalid("body", "not valid JSON: nested too deeply") from e


def field_problem(message: str) -> tuple[str, str]:
    """Split a msgspec error into the field path (`pickup.lat`, `trucks[0]`) and the problem."""
    match = _AT.match(message)
    problem = match["problem"] if match else message
    path = (match["path"] if match else None) or ""
    if repr(NO_NUL) in problem:
        problem = NUL_PROBLEM
    named = _NAMED.search(problem)
    if named:
        path = f"{path}.{named['name']}"
    return (path.lstrip(".") or "body"), problem


def check_distinct_types(body: CreateBroadcastBody) -> None:
    types = [truck.vehicle_type for truck in body.trucks]
    if len(set(types)) != len(types):
        raise invalid("trucks", "each vehicleType may appear only once")
