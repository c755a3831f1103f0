"""The timer service: its `ServiceSpec` for `weelo run timer`."""

from libs.runtime.service import ServiceSpec

SERVICE = ServiceSpec(name="timer", default_port=8103)
