"""The fan-out service: domain events become the users' WebSocket messages in their inboxes.

Any number of copies may run; the holder of the projector's lease projects, the others stand
by (`projector.py`). It serves `/health`, `/livez` and `/metrics` on `HEALTH_PORT`.
"""

from libs.runtime.service import ServiceSpec
from services.fanout.projector import RECORD_CONNECTIONS, run_projector

SERVICE = ServiceSpec(
    name="fanout",
    default_port=8105,
    tasks=(run_projector,),
    dedicated_connections=RECORD_CONNECTIONS,
)
