"""Hostile input at the HTTP edge (issue 11, items 3, 4, 5, 9 and 10), through a real gateway.

Every case goes over a real socket to the module's gateway process (with the broadcast and
acceptance services behind it) and checks the contract's error body; the NUL cases also check
that PostgreSQL holds nothing new for the caller.
"""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
import psycopg
import pytest

from tests.gateway.conftest import Gateway, new_id
from tests.gateway.helpers import create, error, register_vehicle, search, vehicle_type

Conn = psycopg.AsyncConnection[Any]
BAD_UTF8 = b"\xff\xfe\xc3"
NUL = "\\u0000"
DEEP = b'{"pickup": ' + b"[" * 5000 + b"]" * 5000 + b"}"


@pytest.fixture(scope="module")
def gateway_services() -> tuple[str, ...]:
    """The module's gateway has the broadcast and acceptance services behind it."""
    return ("broadcast", "acceptance")


@pytest.fixture
async def api(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for that gateway, over real sockets."""
    async with httpx.AsyncClient(base_url=gateway.url, timeout=15.0) as client:
        yield client


def invalid(response: httpx.Response, field: str | None = None) -> list[dict[str, str]]:
    """The 422 `invalid_request` body: code, message and `details` of field/problem pairs."""
    body = error(response, 422, "invalid_request")
    assert set(body) == {"code", "message", "details"}, body
    details: list[dict[str, str]] = body["details"]
    assert details and all(set(d) == {"field", "problem"} for d in details), details
    assert all(isinstance(d["field"], str) and d["problem"] for d in details), details
    if field is not None:
        assert [d["field"] for d in details] == [field], details
    return details


def raw_json(template: str, value: bytes) -> bytes:
    """`template` (JSON with one `%s` inside a string) with `value` put in as raw bytes."""
    head, tail = template.encode().split(b"%s")
    return head + value + tail


async def post_raw(
    api: httpx.AsyncClient, url: str, content: bytes, headers: dict[str, str], method: str = "POST"
) -> httpx.Response:
    headers = {**headers, "Content-Type": "application/json"}
    return await api.request(method, url, content=content, headers=headers)


# Item 3: invalid UTF-8 inside a JSON string.

BODY_ROUTES = [
    ("POST", "/v1/broadcasts", "customer", '{"pickup": {"lat": 1, "lng": 2, "address": "%s"}}'),
    ("POST", "/v1/broadcasts/b-1/cancel", "customer", '{"reason": "%s"}'),
    ("POST", "/v1/broadcasts/b-1/accept", "transporter", '{"vehicleType": "%s"}'),
    ("POST", "/v1/truck-requests/t-1/accept", "transporter", '{"%s": 1}'),
    ("POST", "/v1/assignments/a-1/driver", "transporter", '{"driverId": "%s"}'),
    ("PUT", "/v1/transporters/me/vehicles/v-1", "transporter", '{"vehicleType": "%s"}'),
    ("PUT", "/v1/transporters/me/drivers/d-1", "transporter", '{"name": "%s"}'),
    ("PUT", "/v1/drivers/me/availability", "driver", '{"%s": true}'),
]


@pytest.mark.parametrize(("method", "url", "role", "template"), BODY_ROUTES)
@pytest.mark.parametrize("keyed", [False, True])
async def test_invalid_utf8_in_a_json_string_is_422(
    api: httpx.AsyncClient,
    gateway: Gateway,
    method: str,
    url: str,
    role: Any,
    template: str,
    keyed: bool,
) -> None:
    """Bytes that are not UTF-8 inside a JSON string are 422 invalid_request (field `body`) on
    every body route, with or without an Idempotency-Key, never a 500."""
    headers = gateway.auth(role)
    if keyed and method == "POST":
        headers["Idempotency-Key"] = new_id("k")
    response = await post_raw(api, url, raw_json(template, BAD_UTF8), headers, method)
    invalid(response, "body")


async def test_invalid_utf8_on_refresh_is_422(api: httpx.AsyncClient) -> None:
    """`POST /v1/auth/refresh` (no token needed) answers invalid UTF-8 with 422, not a 500."""
    content = raw_json('{"refreshToken": "%s"}', BAD_UTF8)
    invalid(await post_raw(api, "/v1/auth/refresh", content, {}), "body")


# Item 4: NUL (\u0000) in text fields.


async def footprint(conn: Conn, caller: str, *ids: str) -> list[tuple[Any, ...]]:
    """Every row in PostgreSQL that names `caller` or one of `ids`."""
    names = [caller, *ids]
    like = [f"%{name}%" for name in names]
    queries = [
        ("SELECT * FROM events WHERE stream_id || data::text LIKE ANY(%s)", like),
        ("SELECT * FROM broadcasts WHERE customer_id = ANY(%s)", names),
        ("SELECT * FROM vehicles WHERE transporter_id = ANY(%s) OR vehicle_id = ANY(%s)", None),
        ("SELECT * FROM drivers WHERE transporter_id = ANY(%s) OR driver_id = ANY(%s)", None),
        ("SELECT * FROM idempotency_keys WHERE principal LIKE ANY(%s)", like),
        ("SELECT * FROM command_results WHERE reply::text LIKE ANY(%s)", like),
    ]
    rows: list[tuple[Any, ...]] = []
    for sql, param in queries:
        params = (param,) if param is not None else (names, names)
        cur = await conn.execute(sql, params)  # type: ignore[arg-type]
        rows.extend(await cur.fetchall())
    return rows


def with_nul(value: str = "ab") -> str:
    """A JSON string literal (quotes included) holding a NUL in the middle of `value`."""
    return f'"{value[:1]}{NUL}{value[1:]}"'


# Fields with a pattern of their own (ids, vehicle types) refused a NUL before; free text did not.
PATTERNED = {"trucks[0].vehicleType", "vehicleType", "driverId", "vehicleId"}
NUL_BODIES = [
    ("customer", "POST", "/v1/broadcasts", "note"),
    ("customer", "POST", "/v1/broadcasts", "pickup.address"),
    ("customer", "POST", "/v1/broadcasts", "drop.address"),
    ("customer", "POST", "/v1/broadcasts", "trucks[0].vehicleType"),
    ("transporter", "PUT", "/v1/transporters/me/drivers/{id}", "name"),
    ("transporter", "PUT", "/v1/transporters/me/drivers/{id}", "phone"),
    ("transporter", "PUT", "/v1/transporters/me/vehicles/{id}", "vehicleType"),
    ("transporter", "POST", "/v1/assignments/{id}/driver", "driverId"),
    ("transporter", "POST", "/v1/assignments/{id}/driver", "vehicleId"),
    ("transporter", "POST", "/v1/broadcasts/{id}/accept", "vehicleType"),
]


def nul_body(path: str, field: str) -> bytes:
    """A valid body for `path` whose `field` holds a NUL."""
    kind = vehicle_type()
    if path == "/v1/broadcasts":
        parts = {
            "pickup": '{"lat": 12.97, "lng": 77.59, "address": %s}',
            "drop": '{"lat": 13.03, "lng": 77.62, "address": %s}',
            "trucks": '[{"vehicleType": %s, "quantity": 1}]',
            "note": "%s",
        }
        values = {
            "note": '"n"',
            "pickup.address": '"p"',
            "drop.address": '"d"',
            "trucks[0].vehicleType": f'"{kind}"',
        }
        values[field] = with_nul(kind if "vehicleType" in field else "ab")
        filled = {
            "pickup": parts["pickup"] % values["pickup.address"],
            "drop": parts["drop"] % values["drop.address"],
            "trucks": parts["trucks"] % values["trucks[0].vehicleType"],
            "note": values["note"],
        }
        return ("{" + ", ".join(f'"{k}": {v}' for k, v in filled.items()) + "}").encode()
    fields = {
        "name": '"Ravi"',
        "phone": '"+91 98450 00000"',
        "vehicleType": f'"{kind}"',
        "driverId": '"d-1"',
        "vehicleId": '"v-1"',
    }
    extra = {
        "drivers": ["name", "phone"],
        "vehicles": ["vehicleType"],
        "assignments": ["driverId", "vehicleId"],
        "broadcasts": ["vehicleType"],
    }
    names = next(v for k, v in extra.items() if f"/{k}/" in path)
    fields[field] = with_nul(kind if field == "vehicleType" else "ab")
    pairs = [f'"{n}": {fields[n]}' for n in names]
    if "vehicles" in path:
        pairs += ['"lat": 12.97', '"lng": 77.59']
    if "accept" in path:
        pairs += ['"quantity": 1']
    return ("{" + ", ".join(pairs) + "}").encode()


@pytest.mark.parametrize(("role", "method", "path", "field"), NUL_BODIES)
async def test_nul_in_a_text_field_is_422_and_changes_nothing(
    api: httpx.AsyncClient,
    gateway: Gateway,
    conn: Conn,
    role: Any,
    method: str,
    path: str,
    field: str,
) -> None:
    """A `\\u0000` in any text field is refused at the edge: 422 invalid_request naming the
    field (free text says NUL; not a 503 from PostgreSQL), and PostgreSQL holds nothing new for
    the caller or the id in the path."""
    caller, target = new_id(role[0]), new_id("x")
    before = await footprint(conn, caller, target)
    url = path.format(id=target)
    response = await post_raw(api, url, nul_body(path, field), gateway.auth(role, caller), method)
    details = invalid(response, field)
    assert field in PATTERNED or "NUL" in details[0]["problem"], details
    assert await footprint(conn, caller, target) == before == []


async def test_nul_in_a_cancel_reason_is_422_and_the_broadcast_stays(
    api: httpx.AsyncClient,
    gateway: Gateway,
    conn: Conn,
) -> None:
    """Cancelling a live broadcast with a NUL in `reason` is 422 naming `reason`; the broadcast
    is still active, with no new event."""
    kind, customer = vehicle_type(), new_id("c")
    await register_vehicle(api, gateway, new_id("t"), kind)
    created = await create(api, gateway, customer, search(kind))
    assert created["state"] == "broadcasting"
    broadcast_id = created["broadcastId"]
    before = await footprint(conn, customer, broadcast_id)
    url = f"/v1/broadcasts/{broadcast_id}/cancel"
    content = b'{"reason": ' + with_nul().encode() + b"}"
    invalid(await post_raw(api, url, content, gateway.auth("customer", customer)), "reason")
    assert await footprint(conn, customer, broadcast_id) == before
    again = await api.get(
        f"/v1/broadcasts/{broadcast_id}", headers=gateway.auth("customer", customer)
    )
    assert again.json()["state"] == "broadcasting"
    await api.post(url, json={}, headers=gateway.auth("customer", customer))


async def test_nul_in_a_refresh_token_is_422(api: httpx.AsyncClient) -> None:
    """A refresh token with a NUL in it is 422 invalid_request naming `refreshToken`."""
    content = b'{"refreshToken": ' + with_nul("abc.def.ghi").encode() + b"}"
    invalid(await post_raw(api, "/v1/auth/refresh", content, {}), "refreshToken")


async def test_nul_in_a_path_id_is_404_and_changes_nothing(
    api: httpx.AsyncClient,
    gateway: Gateway,
    conn: Conn,
) -> None:
    """An id with a NUL (`%00`) in the path names nothing: 404 not_found, nothing stored."""
    transporter = new_id("t")
    target = new_id("v")
    before = await footprint(conn, transporter, target)
    url = f"/v1/transporters/me/vehicles/{target}%00"
    body = {"vehicleType": vehicle_type(), "lat": 12.97, "lng": 77.59}
    response = await api.put(url, json=body, headers=gateway.auth("transporter", transporter))
    assert set(error(response, 404, "not_found")) == {"code", "message"}
    assert await footprint(conn, transporter, target) == before == []


# Item 5: deeply nested JSON.


@pytest.mark.parametrize("keyed", [False, True])
async def test_deeply_nested_json_is_422(
    api: httpx.AsyncClient,
    gateway: Gateway,
    keyed: bool,
) -> None:
    """JSON nested 5,000 levels deep is 422 invalid_request, with and without an
    Idempotency-Key (whose request hash must not recurse into it), never a 500."""
    headers = gateway.auth("customer")
    if keyed:
        headers["Idempotency-Key"] = new_id("k")
    invalid(await post_raw(api, "/v1/broadcasts", DEEP, headers))
    untyped = b'{"note": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    invalid(
        await post_raw(
            api,
            "/v1/broadcasts",
            untyped,
            {**headers, "Idempotency-Key": new_id("k")} if keyed else headers,
        )
    )


async def test_deeply_nested_json_on_refresh_is_422(api: httpx.AsyncClient) -> None:
    """The token-free refresh route answers deeply nested JSON with 422 too."""
    content = b'{"refreshToken": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    invalid(await post_raw(api, "/v1/auth/refresh", content, {}))


# Item 9: trailing slashes.


def raw_get(url: str, path: str, host: str) -> bytes:
    """The raw HTTP/1.1 answer to `GET path` with a forged `Host` header."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        sock.sendall(request.encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize(
    "path",
    [
        "/v1/broadcasts/",
        "/v1/transporters/me/drivers/",
        "/v1/customers/me/broadcasts/active/",
        "/v1/auth/refresh/",
        "/health/",
        "/livez/",
        "/metrics/",
    ],
)
async def test_trailing_slash_is_404_not_a_redirect(
    api: httpx.AsyncClient,
    gateway: Gateway,
    path: str,
) -> None:
    """A trailing slash names no route: 404 not_found with the error body and no Location,
    whatever the Host header says (no open redirect)."""
    response = await api.get(path, headers={"Host": "evil.example", **gateway.auth("customer")})
    assert "location" not in response.headers
    assert set(error(response, 404, "not_found")) == {"code", "message"}
    answer = raw_get(gateway.url, path, "evil.example")
    head = answer.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.1 404"), head
    assert b"location:" not in head and b"evil.example" not in answer


# Item 10: NumericDate claims must be JSON numbers.


def forged(secret: str, **claims: Any) -> str:
    base: dict[str, Any] = {"sub": new_id("c"), "role": "customer", "exp": int(time.time()) + 600}
    return jwt.encode({**base, **claims}, secret, algorithm="HS256")


# Each claim's value, given the current time: built when the test runs, not at collection.
BAD_DATES: dict[str, tuple[str, Callable[[int], Any]]] = {
    "exp-numeric-string": ("exp", lambda now: str(now + 600)),
    "exp-fractional-string": ("exp", lambda now: f"{now + 600}.5"),
    "exp-true": ("exp", lambda now: True),
    "exp-list": ("exp", lambda now: [now + 600]),
    "exp-null": ("exp", lambda now: None),
    "iat-numeric-string": ("iat", str),
    "iat-true": ("iat", lambda now: True),
    "nbf-numeric-string": ("nbf", lambda now: str(now - 10)),
    "nbf-null": ("nbf", lambda now: None),
}


@pytest.mark.parametrize("case", list(BAD_DATES))
async def test_numeric_date_of_another_type_is_401(
    api: httpx.AsyncClient,
    gateway: Gateway,
    case: str,
) -> None:
    """An `exp`, `iat` or `nbf` that is not a JSON number (a numeric string, a boolean, a list,
    null) is 401 unauthorized, both as an access token and as a refresh token."""
    name, value = BAD_DATES[case]
    claims = {name: value(int(time.time()))}
    access = forged(gateway.access_secret, **claims)
    response = await api.get(
        "/v1/customers/me/broadcasts/active", headers={"Authorization": f"Bearer {access}"}
    )
    body = error(response, 401, "unauthorized")
    assert set(body) == {"code", "message", "reason"} and body["reason"] == "invalid_claims"
    refresh = forged(gateway.refresh_secret, **claims)
    response = await api.post("/v1/auth/refresh", json={"refreshToken": refresh})
    body = error(response, 401, "unauthorized")
    assert set(body) == {"code", "message", "reason"} and body["reason"] == "invalid_claims"


async def test_numeric_dates_as_numbers_are_accepted(
    api: httpx.AsyncClient,
    gateway: Gateway,
) -> None:
    """Integer and fractional `exp`, `iat` and `nbf` numbers are valid NumericDates."""
    now = int(time.time())
    claims = {"exp": now + 600.5, "iat": now, "nbf": now - 10.25}
    access = forged(gateway.access_secret, **claims)
    response = await api.get(
        "/v1/customers/me/broadcasts/active", headers={"Authorization": f"Bearer {access}"}
    )
    error(response, 404, "not_found")
