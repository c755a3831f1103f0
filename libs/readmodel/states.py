"""A broadcast's states (CONTRACT.md section 4), and the two groups the code asks about.

- `OPEN`: its slots may be claimed. Claims, cancels and expiry decide by it; it is what a
  customer's active broadcast and a transporter's actionable list show.
- `UNENDED`: not ended yet, `created` included (a broadcast is `created` only inside the
  transaction that starts it): at most one per customer, and each has a timer. The partial
  unique indexes of migration 0002 use this predicate, so the queries that should use them say
  `state IN {UNENDED_SQL}` word for word.
- `ENDED`: final.
"""

from __future__ import annotations

from typing import Final

OPEN: Final = ("broadcasting", "partially_filled")
UNENDED: Final = ("created", *OPEN)
ENDED: Final = ("fully_filled", "expired", "cancelled")
UNENDED_SQL: Final = "(" + ", ".join(f"'{s}'" for s in UNENDED) + ")"
