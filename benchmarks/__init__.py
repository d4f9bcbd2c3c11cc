"""Measurements of BLUR against the weighted-sum methods: quality, real text, step cost, scaling.

Each benchmark is a module run as ``python -m benchmarks.<name>``; its results go under
``benchmarks/results/`` and the write-up is ``benchmarks/README.md``. Benchmarks reuse the
pipeline's own stages, unlearning loop and evaluator; nothing here is imported by
``components/``.
"""
