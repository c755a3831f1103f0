"""The tools a Python team would pick instead of this system, set up as their users would, and
measured by `make bench` in the same run as ours (docs/benchmarks.md)."""
