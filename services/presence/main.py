"""The presence service: its `ServiceSpec` for `weelo run presence`."""

from libs.runtime.service import ServiceSpec

SERVICE = ServiceSpec(name="presence", default_port=8104)
