"""Benchmarks and reports, run from the repository root (``python -m scripts.NAME``); not installed."""
