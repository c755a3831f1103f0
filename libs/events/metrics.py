"""The figures the contract's guarantees are judged by (section 9), on every process's /metrics.

Each is observed where it happens: leases by `lease.py`, command timeouts by the command client,
dead letters by the runner, stream lag by the trimmer's pass (every 10 s), the outbox by the
relay that holds the lease (every poll interval), expiry lateness by the timer service.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LEASE_HELD = Gauge(
    "weelo_lease_held",
    "1 while this process holds the role's lease (its fencing token apart)",
    ["role"],
)
LEASE_TOKEN = Gauge(
    "weelo_lease_token", "The fencing token of the role's lease held here", ["role"]
)
LEASE_ACQUIRED = Counter(
    "weelo_lease_acquisitions_total", "Times this process took the role's lease", ["role"]
)
COMMAND_TIMEOUTS = Counter(
    "weelo_command_timeouts_total",
    "Commands whose reply did not come in time (or was `unavailable`), by how they were settled:"
    " abandoned (a true 503), settled (they had taken effect: answered their outcome),"
    " unsettled (PostgreSQL unreachable)",
    ["outcome"],
)
DEAD_LETTERS = Counter(
    "weelo_dead_letters_total",
    "Entries this process moved to the dead-letter stream",
    ["stream", "group"],
)
STREAM_LAG = Gauge(
    "weelo_stream_lag_entries",
    "Entries of the stream the group has not read yet",
    ["stream", "group"],
)
STREAM_PENDING = Gauge(
    "weelo_stream_pending_entries",
    "Entries the group read and has not acknowledged",
    ["stream", "group"],
)
DEAD_LETTER_ENTRIES = Gauge("weelo_dead_letter_entries", "Entries in the dead-letter stream")
OUTBOX_ROWS = Gauge("weelo_outbox_rows", "Committed events not yet on a stream (relay holder)")
OUTBOX_AGE = Gauge(
    "weelo_outbox_oldest_age_seconds", "Age of the oldest committed event not yet on a stream"
)
EXPIRY_LATENESS = Histogram(
    "weelo_expiry_lateness_seconds",
    "How long after its expiresAt a broadcast's expiry committed",
    buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0),
)
