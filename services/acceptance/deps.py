"""What the acceptance service's handlers depend on, passed in by its bootstrap."""

from __future__ import annotations

from dataclasses import dataclass, field

from libs.events.clock import Clock, utc_now


@dataclass(frozen=True)
class AcceptanceDeps:
    clock: Clock = field(default=utc_now)
