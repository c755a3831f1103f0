"""`GET /openapi.json` (the API document, `openapi.py`) and `GET /docs`, which renders it with
Swagger UI. The page's files come from the `swagger-ui-bundle-v2` package (Swagger UI's own
dist) and are served here under `/docs/assets/`: the page loads nothing from another host (its
Content-Security-Policy allows this origin only), and Swagger UI's online validator is off."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from services.gateway.errors import not_found
from services.gateway.openapi import render
from services.gateway.openapi_public import DOCS_ASSETS

CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",  # Swagger UI's stylesheet draws its icons as data: SVGs
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
ASSET_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "public, max-age=3600"}

PAGE = b"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Weelo dispatch API</title>
<link rel="stylesheet" href="/docs/assets/swagger-ui.css">
<link rel="icon" type="image/png" href="/docs/assets/favicon-32x32.png" sizes="32x32">
<link rel="icon" type="image/png" href="/docs/assets/favicon-16x16.png" sizes="16x16">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script src="/docs/assets/start.js"></script>
</body>
</html>
"""
# Inline scripts would need a weaker policy: the page's one script of its own is a file.
START_JS = b"""window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout"
});
"""


def swagger_ui_dir() -> Path:
    """The Swagger UI dist inside the installed `swagger-ui-bundle-v2` package."""
    vendor = Path(str(importlib.resources.files("swagger_ui_bundle").joinpath("vendor")))
    found = sorted(vendor.glob("swagger-ui-*"))
    if not found:
        raise FileNotFoundError(f"no Swagger UI under {vendor}")
    return found[-1]


def docs_routes() -> list[Route]:
    """The document, its page and the page's files (built once, when the app is made)."""
    document = render()
    assets = swagger_ui_dir()

    async def openapi_json(_request: Request) -> Response:
        return Response(document, media_type="application/json")

    async def docs(_request: Request) -> Response:
        return Response(PAGE, media_type="text/html", headers=PAGE_HEADERS)

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in DOCS_ASSETS:
            raise not_found()
        if name == "start.js":
            return Response(START_JS, media_type="text/javascript", headers=ASSET_HEADERS)
        return FileResponse(assets / name, headers=ASSET_HEADERS)

    return [
        Route("/openapi.json", openapi_json),
        Route("/docs", docs),
        Route("/docs/assets/{name}", asset),
    ]
