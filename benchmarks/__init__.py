"""Measurements of the pipeline, one study a module on ``harness.py``: ``benchmarks/README.md``."""
