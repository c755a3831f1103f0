"""The gateway service: HTTP API and WebSocket on `GATEWAY_HOST`:`GATEWAY_PORT`, and the
projector that turns domain events into the users' WebSocket messages."""

from starlette.applications import Starlette

from libs.runtime.keyring import open_keyring
from libs.runtime.service import Resources, ServiceSpec
from services.gateway.app import create_app
from services.gateway.realtime.projector import RECORD_CONNECTIONS, run_projector


def gateway_app(resources: Resources) -> Starlette:
    """The API, accepting tokens signed with the current or the previous keys (which follow a
    rotation of the Secrets Manager secret when `WEELO_SECRETS_ID` is set)."""
    return create_app(resources, keys=open_keyring(resources.settings))


SERVICE = ServiceSpec(
    name="gateway",
    default_port=8000,
    app=gateway_app,
    port_setting=lambda s: s.gateway_port,
    tasks=(run_projector,),
    dedicated_connections=RECORD_CONNECTIONS,
)
