"""Reproducible performance runs of keyops (``python -m benchmarks.run``; see docs/benchmarks.md)."""
