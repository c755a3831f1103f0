"""The OpenAPI document (`services/gateway/openapi.py`): valid OpenAPI 3.1, equal to the
committed `docs/openapi.json`, naming every route of the app and every error code the code can
answer, its per-operation refusals matching what the services raise; and a real gateway serving
it and its Swagger UI page from its own files (the conformance of real answers to it is in
`test_openapi_conformance.py`)."""

from __future__ import annotations

import inspect
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import OpenAPIV31SpecValidator
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis
from starlette.routing import Route, WebSocketRoute

import services.gateway as gateway_package
from libs.events import commands
from libs.events.failures import REFUSALS
from libs.readmodel.violations import REFUSED_BY
from libs.runtime.service import Resources
from libs.runtime.settings import Settings
from libs.runtime.tokens import ROLES
from services.gateway.app import create_app
from services.gateway.errors import _HTTP_CODES
from services.gateway.openapi import document, render
from services.gateway.openapi_errors import EDGE, ERROR_CODES, SERVER
from services.gateway.openapi_operations import COMMAND_REFUSALS
from services.gateway.routes import API
from tests.gateway.conftest import Gateway
from tests.gateway.openapi_check import strict_components

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "docs" / "openapi.json"
PAGES = "/app"  # the live screens: pages, not API (the document's description says so)


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return document()


def documented_methods(doc: dict[str, Any]) -> dict[str, set[str]]:
    return {path: {m.upper() for m in item} for path, item in doc["paths"].items()}


def app_methods() -> dict[str, set[str]]:
    """Every route of the gateway app's router and its methods (the app is made, not run)."""
    settings = Settings(
        database_url="postgresql://nobody@127.0.0.1:1/none",
        redis_url="redis://127.0.0.1:1/0",
        jwt_secret="a" * 48,
        jwt_refresh_secret="r" * 48,
    )
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(settings.database_url, open=False)
    redis = Redis.from_url(settings.redis_url)
    app = create_app(Resources(settings, pool, redis, "doc-test", "gateway", ""), environ={})
    found: dict[str, set[str]] = {}
    for route in app.routes:
        if getattr(route, "path", "").startswith(PAGES):
            continue
        if isinstance(route, Route):
            found[route.path] = set(route.methods or ()) - {"HEAD"}
        elif isinstance(route, WebSocketRoute):
            found[route.path] = {"GET"}
        else:
            raise AssertionError(f"a route the test does not know: {route!r}")
    return found


def test_document_validates_as_openapi_3_1(doc: dict[str, Any]) -> None:
    """The document passes openapi-spec-validator's OpenAPI 3.1 validation, with no error."""
    errors = list(OpenAPIV31SpecValidator(doc).iter_errors())
    assert errors == []
    assert doc["openapi"].startswith("3.1")


def test_committed_copy_equals_the_generated_document() -> None:
    """docs/openapi.json is byte for byte what `python -m services.gateway.openapi` prints."""
    assert COMMITTED.read_bytes() == render(), (
        "docs/openapi.json is stale: python -m services.gateway.openapi > docs/openapi.json"
    )


def test_every_app_route_is_documented_and_every_documented_route_exists(
    doc: dict[str, Any],
) -> None:
    """The app's router and the document have the same paths, each with the same methods."""
    assert documented_methods(doc) == app_methods()


def test_each_api_operation_names_its_roles_security_and_idempotency_key(
    doc: dict[str, Any],
) -> None:
    """Every /v1 operation of the route table: its roles (`x-roles` and the description), the
    bearer scheme, its path parameters, and on POST the Idempotency-Key header."""
    for method, path, roles, _handler in API:
        operation = doc["paths"][path][method.lower()]
        assert operation["x-roles"] == list(roles)
        assert all(f"`{role}`" in operation["description"] for role in roles)
        assert operation["security"] == [{"bearer": []}]
        refs = [p["$ref"].rsplit("/", 1)[1] for p in operation["parameters"]]
        assert [r for r in refs if r != "Idempotency-Key"] == re.findall(r"{(\w+)}", path)
        assert ("Idempotency-Key" in refs) == (method == "POST")
        if set(roles) != set(ROLES):
            assert "forbidden" in operation["responses"]["403"].get("x-codes", ["forbidden"])


def codes_of(doc: dict[str, Any], operation: dict[str, Any]) -> set[str]:
    """Every code the operation lists, over its statuses."""
    found: set[str] = set()
    for given in operation["responses"].values():
        ref = given.get("$ref")
        found.update((doc["components"]["responses"][ref.rsplit("/", 1)[1]] if ref else given)
                     .get("x-codes", ()))  # fmt: skip
    return found


def test_only_operations_behind_idempotency_keys_list_their_errors(doc: dict[str, Any]) -> None:
    """`request_in_flight` and `idempotency_key_reused` are listed exactly by the route table's
    POSTs (the ones `routes.api_routes` wraps in `idempotent`), not by `/v1/auth/refresh`."""
    keyed = {(m.lower(), p) for m, p, _r, _h in API if m == "POST"}
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            listed = {"request_in_flight", "idempotency_key_reused"} & codes_of(doc, operation)
            assert bool(listed) == ((method, path) in keyed), (method, path, listed)


def test_request_bodies_carry_their_constraints(doc: dict[str, Any]) -> None:
    """The search body's schema keeps the msgspec constraints: 1-10 trucks, quantity 1-20,
    the vehicle type pattern, unknown fields refused."""
    schemas = doc["components"]["schemas"]
    body = doc["paths"]["/v1/broadcasts"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/CreateBroadcastBody"}
    trucks = schemas["CreateBroadcastBody"]["properties"]["trucks"]
    assert (trucks["minItems"], trucks["maxItems"]) == (1, 10)
    truck = schemas["TruckBody"]
    assert (
        truck["properties"]["quantity"]["minimum"],
        truck["properties"]["quantity"]["maximum"],
    ) == (1, 20)
    assert truck["properties"]["vehicleType"]["pattern"] == "^[a-z0-9_]{1,32}$"
    assert schemas["CreateBroadcastBody"]["additionalProperties"] is False


def test_every_failure_and_edge_code_is_in_the_error_table(doc: dict[str, Any]) -> None:
    """Every code of `REFUSALS`, of the gateway's edge and of the HTTP server is in
    `x-error-codes` with its status, and in the description's table."""
    table = doc["x-error-codes"]
    expected = {code: r.status for code, r in REFUSALS.items()}
    expected |= {code: e.status for code, e in {**EDGE, **SERVER}.items()}
    assert {code: entry["status"] for code, entry in table.items()} == expected
    for code, entry in table.items():
        assert f"| {entry['status']} | `{code}` |" in doc["info"]["description"]


def test_every_refusal_code_is_answered_by_some_operation(doc: dict[str, Any]) -> None:
    """No failure code is only in the table: some operation lists each one per status."""
    listed: set[str] = set()
    for item in doc["paths"].values():
        for operation in item.values():
            listed |= codes_of(doc, operation)
    assert set(REFUSALS) <= listed
    assert set(EDGE) - {"method_not_allowed"} <= listed  # 405: a method no operation has


def _gateway_sources() -> str:
    folder = Path(inspect.getfile(gateway_package)).parent
    return "\n".join(p.read_text() for p in sorted(folder.rglob("*.py")) if "openapi" not in p.name)


def test_every_code_the_gateway_source_answers_is_documented() -> None:
    """Each `(status, "code", ...)` the gateway's source builds an error from is in the
    table with that status: a new edge error without the document following fails here."""
    found = set(re.findall(r"(?:ApiError\(|\()\s*(\d{3}),\s*\"([a-z_]+)\"", _gateway_sources()))
    assert found, "the pattern no longer finds the gateway's errors"
    found |= {(str(status), code) for status, code in _HTTP_CODES.items()}
    for status, code in found:
        assert code in ERROR_CODES, f"{code} ({status}) is not in the document"
        assert ERROR_CODES[code].status == int(status), code


def test_command_refusals_match_what_the_services_raise() -> None:
    """For each module holding command handlers, the codes it refuses with (`Rejected("...")`,
    and the unique-index translations where it uses them) are exactly the codes the document
    gives its commands."""
    declared: dict[str, set[str]] = {}
    for kind, service in commands.ROUTES.items():
        module = __import__(f"services.{service}.handlers", fromlist=["HANDLERS"])
        handler = module.HANDLERS._fns[kind][0]
        declared.setdefault(inspect.getsourcefile(handler) or "", set()).update(
            COMMAND_REFUSALS[kind]
        )
    for path, codes in declared.items():
        source = Path(path).read_text()
        raised = set(re.findall(r"Rejected\(\s*\"([a-z_]+)\"", source))
        if "translated(" in source:
            raised |= set(REFUSED_BY.values())
        assert raised == codes, f"{path}: raises {sorted(raised)}, documented {sorted(codes)}"


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]


async def test_a_real_gateway_serves_the_document_and_its_page_from_itself(
    system: Gateway,
) -> None:
    """/openapi.json is the committed document; /docs is served with a strict CSP and every
    file it references is on the gateway (a path of this origin, answered 200)."""
    async with httpx.AsyncClient(base_url=system.url, timeout=15.0) as client:
        served = await client.get("/openapi.json")
        assert served.status_code == 200 and served.headers["content-type"] == "application/json"
        assert served.content == COMMITTED.read_bytes()
        page = await client.get("/docs")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in page.headers["content-security-policy"]
        links = _Links()
        links.feed(page.text)
        assert len(links.urls) >= 4 and "//" not in page.text.replace("<!DOCTYPE html>", "")
        for url in links.urls:
            assert url.startswith("/docs/assets/"), url
            asset = await client.get(url)
            assert asset.status_code == 200 and len(asset.content) > 100, url
        start = await client.get("/docs/assets/start.js")
        assert '"/openapi.json"' in start.text and "validatorUrl: null" in start.text
        missing = await client.get("/docs/assets/index.html")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


CHROMIUM = Path("/usr/bin/chromium")


async def test_docs_renders_in_a_browser_loading_nothing_from_another_host(
    system: Gateway,
) -> None:
    """Chromium opens /docs: Swagger UI draws every operation of the document, every request
    the page makes goes to the gateway, and the page's CSP refuses nothing it needs."""
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.async_api import async_playwright

    requested: list[str] = []
    complaints: list[str] = []
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = await browser.new_page()
            page.on("request", lambda r: requested.append(r.url))
            page.on("console", lambda m: complaints.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: complaints.append(str(e)))
            await page.goto(f"{system.url}/docs", wait_until="networkidle")
            await page.wait_for_selector(".opblock", timeout=15_000)
            drawn = await page.locator(".opblock").count()
            title = await page.locator(".info .title").inner_text()
        finally:
            await browser.close()
    operations = sum(len(item) for item in document()["paths"].values())
    assert drawn == operations
    assert "Weelo dispatch API" in title
    assert requested and all(url.startswith(system.url + "/") for url in requested), requested
    assert f"{system.url}/openapi.json" in requested
    assert complaints == []


def test_every_error_example_is_valid_for_its_response(doc: dict[str, Any]) -> None:
    """Each error response's examples (one per code) match its schema and code list."""
    components = strict_components(doc)
    responses = [
        given
        for item in doc["paths"].values()
        for operation in item.values()
        for given in operation["responses"].values()
    ]
    responses += components["responses"].values()
    seen = 0
    for response in responses:
        media = response.get("content", {}).get("application/json", {})
        for code, example in media.get("examples", {}).items():
            validator = Draft202012Validator({"components": components, **media["schema"]})
            validator.validate(example["value"])
            assert example["value"]["error"]["code"] == code
            assert code in response["x-codes"]
            seen += 1
    assert seen > len(ERROR_CODES)
