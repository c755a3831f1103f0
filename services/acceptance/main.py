"""The acceptance service: its `ServiceSpec` for `weelo run acceptance`."""

from libs.runtime.service import ServiceSpec

SERVICE = ServiceSpec(name="acceptance", default_port=8102)
