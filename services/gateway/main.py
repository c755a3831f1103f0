"""The gateway service: HTTP API and WebSocket on `GATEWAY_HOST`:`GATEWAY_PORT`."""

from libs.runtime.service import ServiceSpec
from services.gateway.app import create_app

SERVICE = ServiceSpec(
    name="gateway", default_port=8000, app=create_app, port_setting=lambda s: s.gateway_port
)
