"""The broadcast service: its `ServiceSpec` for `weelo run broadcast`."""

from libs.runtime.service import ServiceSpec

SERVICE = ServiceSpec(name="broadcast", default_port=8101)
