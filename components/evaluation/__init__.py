"""Metrics and the evaluator: the numbers that prove data is forgotten and utility kept."""

from components.evaluation.evaluator import EvaluationContext, EvaluationResult, evaluate_models
from components.evaluation.metrics import METRICS, get_metric, register_metric
from components.evaluation.reports import write_reports

__all__ = [
    "METRICS",
    "EvaluationContext",
    "EvaluationResult",
    "evaluate_models",
    "get_metric",
    "register_metric",
    "write_reports",
]
