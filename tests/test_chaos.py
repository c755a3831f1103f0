"""The chaos soak as part of the suite: about 75 s of steady load on two copies of every
service while processes are killed and frozen, Redis is wiped, stopped and rolled back, and
PostgreSQL tables are locked and connections cut; then zero violations of the contract
(chaos/, docs/reliability.md). Select or skip it with `-m chaos` / `-m "not chaos"`.

Like its Redis, the soak's PostgreSQL is its own (the embedded server `make run` uses): its faults
and its dozen processes' connections touch nothing else the suite runs beside it."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from chaos.cluster import ROOT
from chaos.config import SoakConfig
from chaos.soak import run_soak
from libs.local.embedded import embedded_postgres

SECONDS = 75.0
SEED = 20261124
RUN_DIR = ROOT / ".weelo" / "chaos"


@pytest.mark.chaos
@pytest.mark.timeout(480)
@pytest.mark.process  # the soak's cluster of service processes
async def test_chaos_soak_breaks_no_promise() -> None:
    """Under a random (seeded) fault every few seconds, no request, record or message breaks the
    contract: the checker counts zero violations."""
    # The run's logs stay under .weelo/chaos/ (printed first), evidence for any violation.
    with (
        tempfile.TemporaryDirectory(prefix="weelo-chaos-pg-") as data,
        embedded_postgres(Path(data)) as server_url,
    ):
        config = SoakConfig(seconds=SECONDS, seed=SEED, server_url=server_url, run_dir=RUN_DIR)
        result = await run_soak(config)
    print(result.report)
    assert result.verdicts.total == 0, result.report
