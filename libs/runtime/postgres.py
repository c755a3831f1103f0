"""How a process connects to PostgreSQL: the parameters every connection carries, and how many
connections the process may hold (`DB_POOL_SIZE`, CONTRACT.md section 1).

TCP keepalives and a TCP user timeout let a connection whose server vanished (a failover, a
dropped NAT entry) fail within about 25 s instead of hanging for the kernel's two hours; the
application name (`weelo-<service>-<pid>`) shows in `pg_stat_activity` which process holds
which connection. A transaction left idle for `IDLE_IN_TRANSACTION_MS` (its process frozen,
stalled, or gone without the server noticing) is ended by PostgreSQL, so the row locks it holds
cannot stop others for longer: a frozen command executor holding a broadcast's row made a
timer's expiry of that broadcast wait the whole freeze, 8 s (the chaos soak of 2026-12-01 23:51).
Every transaction here runs its statements back to back, so no healthy one is that idle.
"""

from __future__ import annotations

import os

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from libs.runtime.settings import SettingsError

KEEPALIVES_IDLE_S = 10
KEEPALIVES_INTERVAL_S = 5
KEEPALIVES_COUNT = 3
# Unacknowledged data fails the connection after as long as the keepalives take to give up.
TCP_USER_TIMEOUT_MS = (KEEPALIVES_IDLE_S + KEEPALIVES_INTERVAL_S * KEEPALIVES_COUNT) * 1000
POOL_MIN_SIZE = 2
IDLE_IN_TRANSACTION_MS = 1000


def application_name(role: str) -> str:
    """The name this process's connections show in `pg_stat_activity`."""
    return f"weelo-{role}-{os.getpid()}"


def connection_kwargs(name: str) -> dict[str, str | int]:
    """libpq parameters for every connection a service opens (see the module's docstring)."""
    return {
        "application_name": name,
        "keepalives": 1,
        "keepalives_idle": KEEPALIVES_IDLE_S,
        "keepalives_interval": KEEPALIVES_INTERVAL_S,
        "keepalives_count": KEEPALIVES_COUNT,
        "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
        "options": f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS}",
    }


def conninfo(database_url: str, name: str) -> str:
    """`database_url` with `connection_kwargs(name)` added; a parameter it sets itself wins."""
    given = conninfo_to_dict(database_url)
    extra = {k: v for k, v in connection_kwargs(name).items() if k not in given}
    return make_conninfo(database_url, **extra)


def pool_max_size(db_pool_size: int, dedicated: int, role: str) -> int:
    """What `DB_POOL_SIZE` leaves for the pool once the `dedicated` connections that `role`'s
    tasks open outside it are counted; a `SettingsError` when that is not even one."""
    left = db_pool_size - dedicated
    if left < 1:
        raise SettingsError(
            f"DB_POOL_SIZE={db_pool_size} is too small for {role}: it opens {dedicated} "
            f"PostgreSQL connections of its own besides its pool, which needs at least one; "
            f"set DB_POOL_SIZE to {dedicated + 1} or more"
        )
    return left
