"""After the load stopped and the system settled: PostgreSQL, Redis and every client's log
against the contract. Each check is in its own module; this runs them all."""

from __future__ import annotations

from collections.abc import Mapping

from chaos.availability_check import check_availability
from chaos.expected import expected_messages
from chaos.fold import fold
from chaos.invariants import check_invariants
from chaos.messages_check import check_messages
from chaos.records import RunLog
from chaos.requests_check import check_requests
from chaos.store import Store
from chaos.system_check import RoleMove, check_roles, check_streams, role_moves
from chaos.timeliness import check_expiries
from chaos.verdicts import Verdicts


def check(
    store: Store,
    log: RunLog,
    transporter_of: Mapping[str, str],
    closed_at: float,
) -> tuple[Verdicts, list[RoleMove]]:
    out = Verdicts()
    folded = fold(store.events)
    check_invariants(out, store, folded)
    check_requests(out, log.attempts, folded)
    check_availability(out, log.attempts, folded)
    check_expiries(out, store, folded, log)
    check_streams(out, store)
    check_messages(out, log, expected_messages(folded, transporter_of), closed_at)
    moves = role_moves(log)
    check_roles(out, moves)
    out.stats["events"] = str(len(store.events))
    out.stats["broadcasts"] = str(len(folded.broadcasts))
    out.stats["assignments"] = str(len(folded.assignments))
    return out, moves
