"""The promotion gate: thresholds in, a decision with its reasons out.

- :mod:`.thresholds`: :func:`evaluate_gate`, a pure function of the metrics and ``gate.*``.
- :mod:`.coverage`: the registry's own check that a candidate forgot every processed request.
"""

from components.gate.coverage import coverage_check
from components.gate.thresholds import evaluate_gate

__all__ = ["coverage_check", "evaluate_gate"]
