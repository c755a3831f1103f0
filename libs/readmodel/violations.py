"""What a write running into a unique index of the read models means: the one table from
PostgreSQL's constraint names to the domain's answers, applied where the writes are made.

The partial unique indexes back invariants that hold even if Redis lost everything (CONTRACT.md
section 8); the services check them first under row locks, so a violation is a race the locks
did not cover (another instance, a path that does not lock).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Final

from psycopg import errors

from libs.events.commands import Rejected
from libs.events.failures import FailureCode
from libs.events.store import ConcurrencyConflict

# The write would break the invariant: the command is refused with the code.
REFUSED_BY: Final[dict[str, FailureCode]] = {
    "assignments_one_active_per_driver": "driver_busy",
    "assignments_one_active_per_vehicle": "vehicle_busy",
}
# The write lost a race with a concurrent command: the command is decided again.
RACED_BY: Final[frozenset[str]] = frozenset({"broadcasts_one_active_per_customer"})


@contextlib.contextmanager
def translated(subject: str) -> Iterator[None]:
    """Turn a unique violation of an index above into `Rejected` or, for `subject` (what the
    writers raced on), `ConcurrencyConflict`; any other violation stays as it is."""
    try:
        yield
    except errors.UniqueViolation as e:
        name = e.diag.constraint_name or ""
        if (code := REFUSED_BY.get(name)) is not None:
            raise Rejected(code) from e
        if name in RACED_BY:
            raise ConcurrencyConflict(subject, 0) from e
        raise
