"""The gateway service: HTTP API and WebSocket on `GATEWAY_HOST`:`GATEWAY_PORT`. The users'
messages come from their inboxes, which the fan-out service writes (`services/fanout`)."""

from starlette.applications import Starlette

from libs.runtime.keyring import open_keyring
from libs.runtime.service import Resources, ServiceSpec
from services.gateway.app import create_app


def gateway_app(resources: Resources) -> Starlette:
    """The API, accepting tokens signed with the current or the previous keys (which follow a
    rotation of the Secrets Manager secret when `WEELO_SECRETS_ID` is set)."""
    return create_app(resources, keys=open_keyring(resources.settings))


SERVICE = ServiceSpec(
    name="gateway",
    default_port=8000,
    app=gateway_app,
    port_setting=lambda s: s.gateway_port,
)
