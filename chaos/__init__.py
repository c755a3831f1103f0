"""The chaos soak: a two-copy cluster under a steady workload and random faults, then a checker
that holds what PostgreSQL, Redis and every client saw against the contract (CONTRACT.md
sections 2, 4-8). `python -m chaos --help`; docs/reliability.md says what it checks."""
