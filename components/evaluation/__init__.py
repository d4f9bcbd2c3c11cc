"""Metrics and the evaluator: the numbers that prove data is forgotten and utility kept.

The names below load on first use (PEP 562): the unlearning loop's stop rule needs only
:mod:`components.evaluation.formulas`, and every unlearning process (a DVC stage, each
``torchrun`` rank) would otherwise import the whole evaluator with it.
"""

from importlib import import_module

_HOMES = {
    "METRICS": "metrics",
    "EvaluationContext": "evaluator",
    "EvaluationResult": "evaluator",
    "evaluate_models": "evaluator",
    "get_metric": "metrics",
    "register_metric": "metrics",
    "write_reports": "reports",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{_HOMES[name]}"), name)
    globals()[name] = value
    return value
