"""The gateway's Starlette application."""

from __future__ import annotations

from starlette.applications import Starlette

from libs.runtime.health import health_routes
from libs.runtime.service import Resources


def create_app(resources: Resources) -> Starlette:
    return Starlette(routes=health_routes(resources.pool, resources.redis))
