"""The live screens under `/app/` (README "Try it"): static files shipped in the package.

The screens are plain ES modules in `app_static/` with no build step. They use only the public
API (`/v1`, the token in the `Authorization` header) and the WebSocket (`/v1/ws`, the token as
`?token=`, which a browser's WebSocket cannot send as a header). The token reaches a screen in
the URL fragment (`#token=...`), which no browser sends to a server, so it is never in a request
line or a log.

- `/app/` is the index; `/app/{file}` a file of `app_static/`. A directory, a missing file and
  `/app` itself are the API's 404 `not_found`, never a redirect (StaticFiles' `html` mode would
  answer a directory with a redirect built from the Host header).
- Every answer carries a strict Content-Security-Policy (scripts, styles and connections to this
  origin only, no inline code, no frames), `nosniff`, `no-referrer` and `no-cache`.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

STATIC = Path(__file__).resolve().parent / "app_static"
CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
HEADERS = (
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-cache"),
)


class ScreenHeaders:
    """ASGI wrapper: the screens' security headers on every response of `app`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def index(_request: Request) -> Response:
    headers = {name.decode(): value.decode() for name, value in HEADERS}
    return FileResponse(STATIC / "index.html", media_type="text/html", headers=headers)


def screen_routes(directory: Path = STATIC) -> list[BaseRoute]:
    """`/app/` (the index) and the files of `directory` under `/app/`."""
    files = StaticFiles(directory=directory, html=False, follow_symlink=False)
    return [
        Route("/app/", index, methods=["GET", "HEAD"]),
        Mount("/app", app=ScreenHeaders(files)),
    ]
