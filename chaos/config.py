"""The knobs of one soak run, with the defaults `make chaos` and the test use."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
FAULT_KINDS = (
    "kill",
    "freeze",
    "redis_wipe",
    "redis_tail_loss",
    "redis_restart",
    "pg_lock",
    "pg_terminate",
)


def server_url(environ: dict[str, str] | None = None) -> str:
    """The PostgreSQL server the scratch database goes on: TEST_DATABASE_URL, DATABASE_URL, or
    the local default."""
    env = dict(os.environ) if environ is None else environ
    return env.get("TEST_DATABASE_URL") or env.get("DATABASE_URL") or DEFAULT_SERVER


@dataclass(frozen=True)
class Population:
    """Who uses the system: each transporter has `vehicles_per_type` vehicles of every type and
    `drivers_per_transporter` drivers; every party keeps a WebSocket open."""

    customers: int = 6
    transporters: int = 4
    drivers_per_transporter: int = 3
    vehicle_types: tuple[str, ...] = ("open_17ft", "container_20ft", "trailer_32ft")
    vehicles_per_type: int = 2


@dataclass(frozen=True)
class SoakConfig:
    seconds: float = 600.0
    seed: int = 1
    server_url: str = DEFAULT_SERVER
    run_dir: Path = Path(".weelo/chaos")
    fault_interval_s: float = 5.0
    fault_kinds: tuple[str, ...] = FAULT_KINDS
    settle_s: float = 25.0
    copies: int = 2
    broadcast_timeout_s: float = 10.0
    presence_ttl_s: float = 6.0
    gateway_pool_size: int = 7  # DB_POOL_SIZE: relay 3 + probe 1 + pool 3
    service_pool_size: int = 6  # relay 3 + probe 1 + pool 1 (+ the fan-out's record 1)
    log_level: str = "INFO"
    population: Population = field(default_factory=Population)

    @property
    def long_run(self) -> bool:
        """Long enough that Redis memory must be back near idle after the trim interval."""
        return self.seconds >= 300

    def command(self) -> str:
        """The command line that runs this configuration again."""
        kinds = "" if self.fault_kinds == FAULT_KINDS else f" --faults {','.join(self.fault_kinds)}"
        return (
            f".venv/bin/python -m chaos --seconds {self.seconds:g} --seed {self.seed}"
            f" --fault-interval {self.fault_interval_s:g}{kinds}"
        )
