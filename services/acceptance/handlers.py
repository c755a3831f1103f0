"""The acceptance service on one screen: which command runs which handler.

Claims of one broadcast read in one batch are decided in one transaction (`accept_many`,
pipelined: it fetches every result it acts on).
"""

from __future__ import annotations

from libs.events.commands import AcceptSlots, AssignDriver
from libs.events.handlers import CommandHandlers
from services.acceptance.assign import assign_driver
from services.acceptance.claim import accept_many, accept_slots
from services.acceptance.deps import AcceptanceDeps

HANDLERS = (
    CommandHandlers[AcceptanceDeps]()
    .on(AcceptSlots, accept_slots, many=accept_many)
    .on(AssignDriver, assign_driver)
)
