"""The promotion gate: thresholds from ``params.yaml`` checked against the evaluation metrics.

:func:`evaluate_gate` is a pure function of the metrics (the ``reports/metrics.json``
mapping: ``{"target": {...}, "oracle": {...}, "unlearned": {...}}``) and the
:class:`~components.config.GateConfig`. Each non-null threshold is one check:

=============================  ========================================  ====
setting                        value                                      op
=============================  ========================================  ====
``gate.min_forget_quality``    unlearned forget_quality                   >=
``gate.max_forget_prob_ratio`` unlearned forget_prob / target forget_prob  <=
``gate.min_utility_ratio``     unlearned model_utility / target's         >=
``gate.max_abs_privleak``      abs(unlearned privleak)                    <=
=============================  ========================================  ====

A configured check whose value cannot be computed (a null or NaN metric, e.g. forget
quality without an oracle model; a ratio over a zero target value) is *skipped*: recorded
with ``passed=None`` and the reason, and it does not fail the gate unless
``gate.fail_on_missing`` is true. The gate passes iff every evaluated check passes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

from components.config import GateConfig


def _json_number(value: float | None) -> float | str | None:
    """JSON has no infinities: write them as the strings "inf" / "-inf"."""
    if value is not None and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


@dataclass(frozen=True)
class GateCheck:
    """One threshold and what the candidate scored against it."""

    metric: str
    op: str
    threshold: float
    value: float | None
    passed: bool | None  # None: skipped, the value could not be computed
    setting: str
    reason: str | None = None  # why it failed or was skipped

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "op": self.op,
            "threshold": _json_number(self.threshold),
            "value": _json_number(self.value),
            "passed": self.passed,
            "setting": self.setting,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict, later completed by promotion with what happened in the registry.

    ``version`` is the registered model version created for this candidate (None when it
    was not registered); ``alias`` is the alias moved to it (None when it did not move);
    ``champion_version`` is the version the alias points to after the step.
    """

    passed: bool
    checks: tuple[GateCheck, ...]
    model_name: str | None = None
    version: str | None = None
    alias: str | None = None
    run_id: str | None = None
    champion_version: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def reasons(self) -> list[str]:
        """Why the gate failed, one line per failed check (empty when it passed)."""
        return [check.reason for check in self.checks if check.passed is False and check.reason]

    @property
    def skipped(self) -> list[GateCheck]:
        return [check for check in self.checks if check.passed is None]

    def completed(self, **changes: Any) -> "GateDecision":
        """A copy with registry fields filled in (``version``, ``alias``, ``run_id`` ...)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The ``reports/gate.json`` content."""
        return {
            "passed": self.passed,
            "checks": [check.to_dict() for check in self.checks],
            "model_name": self.model_name,
            "version": self.version,
            "alias": self.alias,
            "reasons": self.reasons,
            "skipped": [{"metric": c.metric, "setting": c.setting, "reason": c.reason} for c in self.skipped],
            "run_id": self.run_id,
            "champion_version": self.champion_version,
            "notes": list(self.notes),
        }


def _number(metrics: Mapping[str, Any], model: str, key: str) -> float | None:
    """A metric as a float, None when null/NaN/absent; a non-number is an input error."""
    section = metrics.get(model)
    if section is None:
        return None
    if not isinstance(section, Mapping):
        raise ValueError(f"metrics['{model}'] must be a mapping of metric names to numbers")
    value = section.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"metrics['{model}']['{key}'] must be a number or null, got {type(value).__name__}")
    value = float(value)
    return None if math.isnan(value) else value


def _ratio(metrics: Mapping[str, Any], key: str) -> tuple[float | None, str | None]:
    """unlearned[key] / target[key]; (None, why) when it is undefined."""
    numerator = _number(metrics, "unlearned", key)
    denominator = _number(metrics, "target", key)
    if numerator is None:
        return None, f"unlearned {key} is null"
    if denominator is None:
        return None, f"target {key} is null"
    if denominator == 0:
        if numerator == 0:
            return None, f"unlearned and target {key} are both 0 (ratio undefined)"
        return math.copysign(math.inf, numerator), None
    return numerator / denominator, None


def _forget_quality(metrics):
    value = _number(metrics, "unlearned", "forget_quality")
    return value, None if value is not None else "unlearned forget_quality is null (no oracle model?)"


def _forget_prob_ratio(metrics):
    return _ratio(metrics, "forget_prob")


def _utility_ratio(metrics):
    return _ratio(metrics, "model_utility")


def _abs_privleak(metrics):
    value = _number(metrics, "unlearned", "privleak")
    return (abs(value), None) if value is not None else (None, "unlearned privleak is null (no oracle model?)")


# setting name in GateConfig -> (metric name in gate.json, operator, value function)
CHECKS: dict[str, tuple[str, str, Callable[[Mapping[str, Any]], tuple[float | None, str | None]]]] = {
    "min_forget_quality": ("forget_quality", ">=", _forget_quality),
    "max_forget_prob_ratio": ("forget_prob_ratio", "<=", _forget_prob_ratio),
    "min_utility_ratio": ("utility_ratio", ">=", _utility_ratio),
    "max_abs_privleak": ("abs_privleak", "<=", _abs_privleak),
}


def _compare(value: float, op: str, threshold: float) -> bool:
    return value >= threshold if op == ">=" else value <= threshold


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def evaluate_gate(metrics: Mapping[str, Any], gate: GateConfig) -> GateDecision:
    """Check every configured threshold; see the module docstring for the rules."""
    if not isinstance(metrics, Mapping):
        raise ValueError("metrics must be a mapping such as {'target': {...}, 'unlearned': {...}}")
    fail_on_missing = gate.fail_on_missing
    checks: list[GateCheck] = []
    for setting, (metric, op, compute) in CHECKS.items():
        threshold = getattr(gate, setting)
        if threshold is None:
            continue
        threshold = float(threshold)
        value, why_missing = compute(metrics)
        where = f"gate.{setting}"
        if value is None:
            if fail_on_missing:
                reason = f"{metric} cannot be computed: {why_missing} ({where}; gate.fail_on_missing is true)"
                checks.append(GateCheck(metric, op, threshold, None, False, where, reason))
            else:
                reason = f"{metric} skipped: {why_missing} ({where})"
                checks.append(GateCheck(metric, op, threshold, None, None, where, reason))
            continue
        passed = _compare(value, op, threshold)
        reason = None
        if not passed:
            failed_op = "<" if op == ">=" else ">"
            reason = f"{metric} {_fmt(value)} {failed_op} {_fmt(threshold)} ({where})"
        checks.append(GateCheck(metric, op, threshold, value, passed, where, reason))
    passed = all(check.passed is not False for check in checks)
    notes = []
    if not checks:
        notes.append("no gate thresholds are configured (every gate.* is null): the candidate passes unchecked")
    elif all(check.passed is None for check in checks):
        notes.append("every configured check was skipped (its metric is null): nothing was actually checked")
    return GateDecision(passed=passed, checks=tuple(checks), notes=tuple(notes))
