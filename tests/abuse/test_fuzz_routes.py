"""A property-based fuzz of every route in the route table, against a real system (issue 11).

Hypothesis sends each route of `services.gateway.routes.API` (and `POST /v1/auth/refresh`)
generated requests: bodies built from the route's own request struct with one value mutated
(wrong type, huge number, NaN, NUL, lone surrogate, invalid UTF-8 bytes, deep nesting, a missing
or unknown field), arbitrary JSON, raw bytes, an empty or oversized body; `Content-Type`,
`Idempotency-Key` and `Authorization` headers (valid tokens of every role for a few shared
subjects, refresh tokens, expired, wrongly signed, `alg: none`, HS512, `exp` as a string, unknown
role, malformed `sub`, garbage); path ids that are known, unicode, dot segments, percent-encoded
or very long, and trailing slashes. The system is a real gateway process with the broadcast,
acceptance, timer and presence services behind it. It proves, for every request:

- an answer comes, and it is never 5xx;
- every 4xx is exactly the contract's error body, `{"error": {"code", "message", ...}}` as JSON,
  its code one the contract gives that status (422 `invalid_request` with `details`, a list of
  `{"field", "problem"}`), and a forged or missing token on an API route is never let through;
- a refused request (4xx) changed nothing in PostgreSQL: the event store, the fleet, broadcasts,
  truck requests, recipients and assignments are as before, no command recorded a success, and
  the only `Idempotency-Key` row it may add is its own, holding the refusal it was answered.

Routes are read from the route table and their bodies from the handlers' request structs, so a
new route joins the fuzz without a change here.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import re
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import httpx
import jwt
import msgspec
import msgspec.inspect as mi
import psycopg
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from starlette.routing import Route as StarletteRoute

from libs.events.failures import REFUSALS
from libs.runtime.tokens import ROLES, Role, issue
from services.gateway import bodies
from services.gateway.http import Deps
from services.gateway.routes import API, api_routes
from tests.processes import Service, environment, services

BACKEND = ("broadcast", "acceptance", "timer", "presence")
EXAMPLES_PER_ROUTE = 40
SETTLE_S = 5.0
VEHICLE_TYPE = "open_17ft"
SUBJECTS: dict[Role, tuple[str, ...]] = {
    "customer": ("fz-cust-1", "fz-cust-2"),
    "transporter": ("fz-trans-1", "fz-trans-2"),
    "driver": ("fz-drv-1", "fz-drv-2"),
}
PICKUP = {"lat": 12.97, "lng": 77.59, "address": "MG Road"}
DROP = {"lat": 13.03, "lng": 77.62, "address": "Hebbal"}
ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

# Codes each 4xx may carry: the services' failure table, and the edge's own answers.
CODES: dict[int, set[str]] = {
    400: {"bad_request"},
    401: {"unauthorized"},
    404: {"not_found"},
    405: {"method_not_allowed"},
    408: {"request_timeout"},
    409: {"request_in_flight"},
    413: {"payload_too_large"},
    414: {"uri_too_long"},
    422: {"invalid_request", "idempotency_key_reused"},
    429: {"rate_limited"},
    431: {"headers_too_large"},
}
for _code, _refusal in REFUSALS.items():
    CODES.setdefault(_refusal.status, set()).add(_code)
# A request that carries no valid access token never gets past authentication on a /v1 route.
UNAUTHENTICATED = {401, 404, 405, 414, 431}


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    roles: Sequence[Role]
    body: type[bodies.Body] | None

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def request_struct(handler: Callable[..., Any]) -> type[bodies.Body] | None:
    """The request body struct a handler decodes (the one `bodies` struct its code names)."""
    names = set(handler.__code__.co_names)
    found = [
        kind
        for name, kind in vars(bodies).items()
        if name in names and isinstance(kind, type) and issubclass(kind, bodies.Body)
    ]
    return found[0] if found else None


ROUTES = [
    Route(method, path, roles, request_struct(handler)) for method, path, roles, handler in API
]
REFRESH = Route("POST", "/v1/auth/refresh", (), bodies.RefreshBody)


@dataclass(repr=False)
class System:
    url: str
    port: int
    env: dict[str, str]
    db: psycopg.Connection[tuple[Any, ...]]
    known_ids: list[str] = field(default_factory=list)

    def __repr__(self) -> str:  # never the environment: it holds the signing keys
        return f"System({self.url})"

    def token(self, role: Role, sub: str, ttl_s: int = 3600, refresh: bool = False) -> str:
        secret = self.env["JWT_REFRESH_SECRET" if refresh else "JWT_SECRET"]
        return issue(secret, role=role, sub=sub, ttl_s=ttl_s)

    def auth(self, role: Role, sub: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(role, sub)}"}

    def remember(self, value: Any) -> None:
        """Keep every id a response names, so later requests aim at real things."""
        if isinstance(value, dict):
            for key, item in value.items():
                if key.endswith("Id") and isinstance(item, str) and ID.match(item):
                    if item not in self.known_ids and len(self.known_ids) < 64:
                        self.known_ids.append(item)
                else:
                    self.remember(item)
        elif isinstance(value, list):
            for item in value:
                self.remember(item)


@pytest.fixture(scope="module")
def database_url(module_database: str) -> str:
    """The services act on their whole database, and the fingerprint reads it: its own."""
    return module_database


@pytest.fixture(scope="module")
def system(service_env_module: dict[str, str], database_url: str) -> Iterator[System]:
    """A gateway with every backend service, seeded with a fleet, a broadcast and an
    assignment, and limits far above what the fuzz sends."""
    secrets = {k: v + "-" + "x" * 32 for k, v in service_env_module.items() if k.startswith("JWT_")}
    env = environment(
        service_env_module,
        **secrets,
        RATE_LIMIT_PER_MINUTE="100000000",
        AUTH_FAILURES_PER_MINUTE="100000000",
        BROADCAST_TIMEOUT_SECONDS="3600",
        PRESENCE_TTL_SECONDS="3600",
    )
    with (
        services(["gateway", *BACKEND], env) as procs,
        psycopg.connect(database_url, autocommit=True) as db,
    ):
        gateway: Service = procs["gateway"]
        found = System(f"http://127.0.0.1:{gateway.port}", gateway.port, env, db)
        seed(found)
        yield found


def seed(system: System) -> None:
    """Two transporters' vehicles and drivers, an online driver, an active broadcast both were
    sent, and one of its slots accepted."""
    with httpx.Client(base_url=system.url, timeout=15.0) as api:

        def ok(response: httpx.Response) -> Any:
            assert response.status_code < 300, response.text
            body = response.json() if response.content else None
            system.remember(body)
            return body

        for n, transporter in enumerate(SUBJECTS["transporter"], start=1):
            auth = system.auth("transporter", transporter)
            vehicle = {"vehicleType": VEHICLE_TYPE, "lat": PICKUP["lat"], "lng": PICKUP["lng"]}
            ok(api.put(f"/v1/transporters/me/vehicles/fz-veh-{n}", json=vehicle, headers=auth))
            driver = {"name": f"Driver {n}", "phone": f"+91 98450 0000{n}"}
            ok(api.put(f"/v1/transporters/me/drivers/fz-drv-{n}", json=driver, headers=auth))
        ok(
            api.put(
                "/v1/drivers/me/availability",
                json={"online": True},
                headers=system.auth("driver", "fz-drv-1"),
            )
        )
        search = {
            "pickup": PICKUP,
            "drop": DROP,
            "trucks": [{"vehicleType": VEHICLE_TYPE, "quantity": 3}],
        }
        created = ok(
            api.post("/v1/broadcasts", json=search, headers=system.auth("customer", "fz-cust-1"))
        )
        accept = {"vehicleType": VEHICLE_TYPE, "quantity": 1}
        ok(
            api.post(
                f"/v1/broadcasts/{created['broadcastId']}/accept",
                json=accept,
                headers=system.auth("transporter", "fz-trans-1"),
            )
        )
    settle(system)


# What a request could change, as one comparable value.

TABLES = ("vehicles", "drivers", "broadcasts", "truck_requests", "broadcast_recipients")
FINGERPRINT = "SELECT " + ", ".join(
    [
        "(SELECT count(*) || ':' || coalesce(max(position), 0) FROM events)",
        *(
            f"(SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {table} t)"
            for table in (*TABLES, "assignments")
        ),
        "(SELECT count(*) FROM command_results WHERE reply IS NOT NULL"
        " AND jsonb_typeof(reply->'failure') IS DISTINCT FROM 'object')",
        "(SELECT count(*) FROM idempotency_keys)",
    ]
)
NAMES = ("events", *TABLES, "assignments", "successful commands", "idempotency keys")


def fingerprint(system: System) -> dict[str, Any]:
    row = system.db.execute(FINGERPRINT).fetchone()
    assert row is not None
    return dict(zip(NAMES, row, strict=True))


def settle(system: System) -> None:
    """Wait until a change's trailing effects are done: two fingerprints in a row agree."""
    deadline = time.monotonic() + SETTLE_S
    last = fingerprint(system)
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = fingerprint(system)
        if now == last:
            return
        last = now


# Requests.


@dataclass(frozen=True)
class Fuzzed:
    method: str
    target: str
    headers: tuple[tuple[str, bytes], ...]
    body: bytes
    principal: tuple[Role, str] | None  # whom a valid access token names
    forged: bool  # the Authorization header holds no valid access token

    def header(self, name: str) -> bytes | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def __str__(self) -> str:
        shown = self.body if len(self.body) <= 300 else self.body[:300] + b"..."
        return f"{self.method} {self.target[:300]}\nheaders={self.headers!r}\nbody={shown!r}"


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def send(system: System, request: Fuzzed) -> Answer:
    """`request` on a connection of its own; fails the test when no answer comes. The server
    may answer (413, 431) and close before the body is all sent: its answer still counts."""
    conn = http.client.HTTPConnection("127.0.0.1", system.port, timeout=20)
    try:
        conn.putrequest(request.method, request.target, skip_accept_encoding=True)
        for name, value in request.headers:
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(len(request.body)))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            conn.endheaders(request.body)
        response = conn.getresponse()
        headers = {k.lower(): v for k, v in response.getheaders()}
        return Answer(response.status, headers, response.read())
    except (OSError, http.client.HTTPException) as e:
        pytest.fail(f"no answer ({e!r}) to\n{request}")
    finally:
        conn.close()


# Strategies.

NUL_TEXTS = ("\x00", "a\x00b", "MG\x00Road", "\x00" * 40)
STRANGE_TEXTS = ("", " ", "\ud800", "\udfff", "x" * 600, "\u202e", "😀" * 300, "../../etc")
HUGE_NUMBERS = (10**30, -(10**30), 2**63, 2**64, 1e308, -1e308, 1e-320, 0, -1, 21, 1.5)
JUNK_VALUES: list[Any] = [
    None,
    True,
    False,
    [],
    {},
    [1, 2, 3],
    {"a": {"b": None}},
    math.nan,
    math.inf,
    -math.inf,
    *HUGE_NUMBERS,
    *NUL_TEXTS,
    *STRANGE_TEXTS,
]
# Raw bytes put in place of a JSON string's content (after encoding).
RAW_STRINGS = (
    b"\xff",
    b"\xc3\x28",
    b"caf\xe9",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\x80abc",
    b"\\ud800",
    b"\\udc00x",
    b"\\u0000",
    b"a\x00b",
    b"\\x41",
    b"\\u12",
    b"\x01\x02\x1f",
)
RAW = "\ue000raw\ue000"  # a marker no generated text contains

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=40),
    st.sampled_from(JUNK_VALUES),
)
any_json = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=20,
)


def valid_text(kind: mi.StrType, known: Sequence[str]) -> st.SearchStrategy[str]:
    if kind.pattern:
        pattern = re.compile(kind.pattern)
        fitting = [value for value in known if pattern.search(value)]
        generated = st.from_regex(kind.pattern, fullmatch=True)
        return st.one_of(st.sampled_from(fitting), generated) if fitting else generated
    chars = st.characters(blacklist_categories=("Cs", "Cc"))
    text = st.text(chars, min_size=kind.min_length or 0, max_size=min(kind.max_length or 40, 40))
    return st.one_of(text, st.sampled_from(known)) if known else text


def valid(kind: mi.Type, known: Sequence[str]) -> st.SearchStrategy[Any]:
    """A value that `kind` accepts (as JSON), from msgspec's own description of the struct."""
    if isinstance(kind, mi.StructType):
        required = {f.encode_name: valid(f.type, known) for f in kind.fields if f.required}
        optional = {f.encode_name: valid(f.type, known) for f in kind.fields if not f.required}
        return st.fixed_dictionaries(required, optional=optional)
    if isinstance(kind, mi.UnionType):
        return st.one_of([valid(member, known) for member in kind.types])
    if isinstance(kind, (mi.VarTupleType, mi.ListType)):
        item = valid(kind.item_type, known)
        return st.lists(item, min_size=kind.min_length or 0, max_size=kind.max_length or 5)
    return valid_scalar(kind, known)


def valid_scalar(kind: mi.Type, known: Sequence[str]) -> st.SearchStrategy[Any]:
    if isinstance(kind, mi.StrType):
        return valid_text(kind, known)
    if isinstance(kind, mi.FloatType):
        return st.floats(kind.ge, kind.le, allow_nan=False, allow_infinity=False)
    if isinstance(kind, mi.IntType):
        return st.integers(kind.ge, kind.le)
    if isinstance(kind, mi.BoolType):
        return st.booleans()
    if isinstance(kind, mi.NoneType):
        return st.none()
    return any_json


def paths_of(value: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON value, the whole value (`()`) included."""
    found = [at]
    if isinstance(value, dict):
        for key, item in value.items():
            found += paths_of(item, (*at, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += paths_of(item, (*at, index))
    return found


def replaced(value: Any, at: tuple[Any, ...], new: Any) -> Any:
    if not at:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[at[0]] = replaced(value[at[0]], at[1:], new)
    return copy


def removed(value: Any, at: tuple[Any, ...]) -> Any:
    if len(at) == 1 and isinstance(value, dict):
        return {k: v for k, v in value.items() if k != at[0]}
    if len(at) <= 1:
        return value
    return replaced(value, at[:1], removed(value[at[0]], at[1:]))


def encode(value: Any) -> bytes:
    """JSON as a careless client writes it (NaN and lone surrogates included)."""
    return json.dumps(value).encode()


def nested(depth: int, leaf: str = "1") -> bytes:
    return (b"[" * depth) + leaf.encode() + (b"]" * depth)


@st.composite
def struct_body(draw: st.DrawFn, kind: type[bodies.Body], known: Sequence[str]) -> bytes:
    """A valid body of `kind`, mostly with one place in it broken."""
    value = draw(valid(mi.type_info(kind), known))
    at = draw(st.sampled_from(paths_of(value)))
    how = draw(
        st.sampled_from(
            ["keep", "junk", "any", "remove", "unknown", "raw", "deep", "deep_key", "nul"]
        )
    )
    raw = b""
    if how == "junk":
        value = replaced(value, at, draw(st.sampled_from(JUNK_VALUES)))
    elif how == "any":
        value = replaced(value, at, draw(any_json))
    elif how == "remove":
        value = removed(value, at)
    elif how == "unknown" and isinstance(value, dict):
        value = {**value, draw(st.sampled_from(["id", "customerId", "__proto__", ""])): 1}
    elif how == "raw":  # raw bytes as a string's content
        value, raw = replaced(value, at, RAW), b'"' + draw(st.sampled_from(RAW_STRINGS)) + b'"'
    elif how == "deep":  # spliced in as text: deeper than Python's json may write
        depth = draw(st.sampled_from([64, 1000, 5000, 20000]))
        value, raw = replaced(value, at, RAW), nested(depth)
    elif how == "nul":
        value = replaced(value, at, draw(st.sampled_from(NUL_TEXTS)))
    encoded = encode(value)
    return encoded.replace(json.dumps(RAW).encode(), raw, 1) if raw else encoded


def body_for(route: Route, known: Sequence[str]) -> st.SearchStrategy[bytes]:
    """Any body at all, or (mostly) one of the route's request struct with a flaw."""
    shapes: list[st.SearchStrategy[bytes]] = [
        st.just(b""),
        any_json.map(encode),
        st.binary(max_size=64),
        st.sampled_from(
            [
                b"{}",
                b"null",
                b"[]",
                b"{",
                b'{"a":1,"a":2}',
                b"\xef\xbb\xbf{}",
                nested(1000),
                nested(30000),
                b'{"a":' * 5000 + b"1" + b"}" * 5000,
                b'{"note": "' + b"x" * 70000 + b'"}',
                b'"\xff"',
                b'{"x": "\\u0000"}',
            ]
        ),
    ]
    if route.body is None:
        return st.one_of(shapes)
    # Mostly the route's own struct broken in one place: what gets past the decoder's door.
    return st.one_of(*shapes, *[struct_body(route.body, known)] * 6)


def alg_none(claims: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return jwt.utils.base64url_encode(json.dumps(value).encode()).decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def forgeries(system: System) -> list[str]:
    """Authorization headers that authenticate no one."""
    secret, now = system.env["JWT_SECRET"], int(time.time())
    good = {"sub": "fz-cust-1", "role": "customer", "exp": now + 3600}
    signed: list[dict[str, Any]] = [
        {**good, "exp": now - 10},
        {**good, "exp": str(now + 3600)},
        {**good, "exp": None},
        {**good, "exp": [now + 3600]},
        {**good, "role": "admin"},
        {**good, "role": ["customer"]},
        {**good, "sub": "../etc"},
        {**good, "sub": "a" * 65},
        {**good, "sub": ""},
        {**good, "sub": 7},
        {"sub": "fz-cust-1", "exp": now + 3600},
        {"role": "customer", "exp": now + 3600},
        {"sub": "fz-cust-1", "role": "customer"},
    ]
    tokens = [jwt.encode(claims, secret, algorithm="HS256") for claims in signed]
    tokens += [
        jwt.encode(good, secret + "-wrong", algorithm="HS256"),
        jwt.encode(good, secret, algorithm="HS512"),
        alg_none(good),
        system.token("customer", "fz-cust-1", refresh=True),
        system.token("transporter", "fz-trans-1", refresh=True),
        "not.a.token",
        "x" * 3000,
        "",
    ]
    valid_one = system.token("customer", "fz-cust-1")
    headers = [f"Bearer {t}" for t in tokens]
    headers += [f"Basic {valid_one}", valid_one, "Bearer", "Bearer  ", f"Token {valid_one}"]
    headers += [f"Bearer {valid_one[:-2]}", f"Bearer {valid_one}x"]
    return headers


@st.composite
def authorization(
    draw: st.DrawFn, route: Route, system: System, forged: list[str]
) -> tuple[bytes | None, tuple[Role, str] | None]:
    """An Authorization header (or none) and the principal it names if it is valid: mostly a
    role the route admits, sometimes another, a forgery or nothing."""
    kind = draw(st.sampled_from(["admitted"] * 12 + ["any"] * 2 + ["forged"] * 5 + ["none"]))
    if kind in ("admitted", "any"):
        roles = route.roles if kind == "admitted" and route.roles else ROLES
        role = draw(st.sampled_from(roles))
        sub = draw(st.sampled_from(SUBJECTS[role]))
        scheme = draw(st.sampled_from(["Bearer"] * 4 + ["bearer", "BEARER"]))
        return f"{scheme} {system.token(role, sub)}".encode(), (role, sub)
    if kind == "forged":
        return draw(st.sampled_from(forged)).encode(), None
    return None, None


header_text = st.binary(max_size=40).map(
    lambda raw: bytes(b for b in raw if b >= 0x20 and b != 0x7F)
)
CONTENT_TYPES = [
    b"application/json",
    b"application/json; charset=utf-8",
    b"application/json; charset=latin-1",
    b"text/plain",
    b"application/x-www-form-urlencoded",
    b"multipart/form-data; boundary=x",
    b"",
    b"\xff\xfe",
]


@st.composite
def idempotency_key(draw: st.DrawFn) -> bytes | None:
    kind = draw(st.sampled_from(["none"] * 4 + ["fixed", "text", "empty", "long", "bytes"]))
    if kind == "fixed":
        return draw(st.sampled_from([b"fuzz-key-1", b"fuzz-key-2"]))
    if kind == "text":
        chars = st.characters(min_codepoint=0x21, max_codepoint=0x7E)
        return draw(st.text(chars, min_size=1, max_size=60)).encode()
    if kind == "empty":
        return b""
    if kind == "long":
        return b"k" * draw(st.sampled_from([255, 256, 1000, 7000]))
    if kind == "bytes":
        return draw(header_text)
    return None


@st.composite
def path_id(draw: st.DrawFn, system: System) -> str:
    """A path segment: a known id, a valid-looking one, or hostile text (percent-encoded or
    raw where the request line allows it)."""
    kind = draw(st.sampled_from(["known"] * 4 + ["valid", "text", "raw", "long", "encoded"]))
    if kind == "known" and system.known_ids:
        return system.known_ids[draw(st.integers(0, 63)) % len(system.known_ids)]
    if kind == "text":
        return urllib.parse.quote(draw(st.text(min_size=1, max_size=30)), safe="")
    if kind == "raw":
        return draw(st.sampled_from(["..", ".", "../..", "a/b", "a;b", "a:b", "~", "$", "@x"]))
    if kind == "long":
        return "a" * draw(st.sampled_from([65, 200, 4000, 9000]))
    if kind == "encoded":
        return draw(
            st.sampled_from(
                ["%2e%2e", "%2F", "a%2Fb", "%00", "%ff", "%", "%zz", "%C0%AF", "%E2%80%AE"]
            )
        )
    return draw(st.from_regex(ID, fullmatch=True))


@st.composite
def target(draw: st.DrawFn, route: Route, system: System) -> str:
    path = route.path
    for name in re.findall(r"\{(\w+)\}", route.path):
        path = path.replace(f"{{{name}}}", draw(path_id(system)))
    ending = draw(st.sampled_from(["", "", "", "", "", "/", "?a=1", "?token=x&x=%ff", "#x"]))
    return path + ending


@st.composite
def fuzzed(draw: st.DrawFn, route: Route, system: System, forged: list[str]) -> Fuzzed:
    others = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
    method = draw(st.sampled_from([route.method] * 30 + others))
    auth, principal = draw(authorization(route, system, forged))
    headers: list[tuple[str, bytes]] = []
    if auth is not None and route is not REFRESH:
        headers.append(("Authorization", auth))
    content_type = draw(st.one_of(st.sampled_from(CONTENT_TYPES), header_text, st.none()))
    if content_type is not None:
        headers.append(("Content-Type", content_type))
    key = draw(idempotency_key())
    if key is not None:
        headers.append(("Idempotency-Key", key))
    if draw(st.integers(0, 9)) == 0:
        name = draw(st.sampled_from(["X-Forwarded-For", "X-Request-Id", "Cookie", "Accept"]))
        headers.append((name, draw(header_text)))
    if route is REFRESH:
        body = draw(refresh_body(system))
    else:
        body = draw(body_for(route, [*system.known_ids, VEHICLE_TYPE]))
    forged_auth = route is not REFRESH and principal is None
    return Fuzzed(method, draw(target(route, system)), tuple(headers), body, principal, forged_auth)


def refresh_body(system: System) -> st.SearchStrategy[bytes]:
    tokens = [system.token(role, SUBJECTS[role][0], refresh=True) for role in ROLES]
    tokens += [system.token("customer", "fz-cust-1"), *forgeries(system)]
    return body_for(REFRESH, tokens)


# Checks.


def check_error_body(request: Fuzzed, answer: Answer) -> None:
    """The contract's error body, and a code the contract gives this status."""
    where = f"{answer.status} {answer.body[:500]!r} for\n{request}"
    assert answer.headers.get("content-type") == "application/json", where
    try:
        body = json.loads(answer.body)
    except ValueError:
        pytest.fail(f"error body is not JSON: {where}")
    assert isinstance(body, dict) and list(body) == ["error"], where
    error = body["error"]
    assert isinstance(error, dict), where
    code, message = error.get("code"), error.get("message")
    assert isinstance(code, str) and code in CODES.get(answer.status, set()), where
    assert isinstance(message, str) and message, where
    if code == "invalid_request":
        details = error.get("details")
        assert isinstance(details, list) and details, where
        for detail in details:
            assert isinstance(detail, dict) and set(detail) == {"field", "problem"}, where
            assert all(isinstance(v, str) and v for v in detail.values()), where


def check_unchanged(
    system: System, request: Fuzzed, answer: Answer, before: dict[str, Any]
) -> None:
    """Nothing a refused request could change did; its own idempotency row at most."""
    after = fingerprint(system)
    changed = {name for name in NAMES if before[name] != after[name]}
    if changed == {"idempotency keys"}:
        assert after["idempotency keys"] == before["idempotency keys"] + 1
        assert own_refusal_stored(system, request, answer), (
            f"an idempotency row not holding this refusal: {answer.status} for\n{request}"
        )
        return
    assert not changed, (
        f"refused {answer.status} {answer.body[:300]!r} but PostgreSQL changed "
        f"({', '.join(sorted(changed))}) for\n{request}"
    )


def own_refusal_stored(system: System, request: Fuzzed, answer: Answer) -> bool:
    key, principal = request.header("Idempotency-Key"), request.principal
    if key is None or principal is None:
        return False
    row = system.db.execute(
        "SELECT response_status FROM idempotency_keys WHERE principal = %s AND key = %s",
        (f"{principal[0]}:{principal[1]}", key.decode("latin-1")),
    ).fetchone()
    return row is not None and row[0] == answer.status


def answered(system: System, request: Fuzzed) -> None:
    before = fingerprint(system)
    answer = send(system, request)
    event(f"answered {answer.status}")
    assert answer.status < 500, (
        f"{answer.status} {answer.body[:500]!r} (status and body) for\n{request}"
    )
    assert not 300 <= answer.status < 400, (
        f"a redirect, {answer.status} to {answer.headers.get('location')!r}, for\n{request}"
    )
    if request.forged:
        assert answer.status in UNAUTHENTICATED, (
            f"no valid token, yet {answer.status} {answer.body[:300]!r} for\n{request}"
        )
    if answer.status >= 400:
        check_error_body(request, answer)
        check_unchanged(system, request, answer, before)
        return
    if answer.headers.get("content-type") == "application/json":
        system.remember(msgspec.json.decode(answer.body))
    if request.method != "GET":
        settle(system)


FUZZ = settings(
    max_examples=EXAMPLES_PER_ROUTE,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
        HealthCheck.large_base_example,
    ],
)


@pytest.mark.parametrize("route", [*ROUTES, REFRESH], ids=str)
@FUZZ
@given(data=st.data())
def test_route_survives_hostile_requests(system: System, route: Route, data: st.DataObject) -> None:
    """No generated request at this route is answered 5xx or left unanswered; every 4xx is the
    contract's error body; no token, no entry; a refused request changes nothing stored."""
    answered(system, data.draw(fuzzed(route, system, forgeries(system)), label="request"))


def test_every_route_of_the_table_is_fuzzed() -> None:
    """The fuzz covers every (method, path) the gateway's API serves, and every handler that
    decodes a body is fuzzed with its request struct."""
    served = {
        (method, route.path)
        for route in api_routes(cast(Deps, object()))  # deps are only closed over
        if isinstance(route, StarletteRoute)
        for method in route.methods or ()
        if method != "HEAD"
    }
    assert served == {(r.method, r.path) for r in [*ROUTES, REFRESH]}
    for _, path, _, handler in API:
        if "decode" in handler.__code__.co_names:
            assert request_struct(handler) is not None, path
