"""The presence service on one screen: which command runs which handler.

Beside its commands the service runs the heartbeat TTL sweep (`sweep.py`), which turns offline
the online drivers unseen for `PRESENCE_TTL_SECONDS`.
"""

from __future__ import annotations

from libs.events.commands import SetAvailability
from libs.events.handlers import CommandHandlers
from services.presence.availability import set_availability
from services.presence.deps import PresenceDeps

HANDLERS = CommandHandlers[PresenceDeps]().on(SetAvailability, set_availability)
