"""Measurements of the pipeline: calibration of its defaults, BLUR against the weighted sum, step cost, scaling.

Each study is a module run as ``python -m benchmarks.<name>`` on ``benchmarks/harness.py`` (the process, cache
and resume, report writer, CLI); its results go to ``benchmarks/results/<stem>.json`` and its write-up,
rendered from that JSON, to ``<stem>.md``. Benchmarks reuse the pipeline's own stages, unlearning loop and
evaluator; nothing here is imported by ``components/``.
"""
