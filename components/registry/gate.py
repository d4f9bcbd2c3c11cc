"""The promotion gate: thresholds from ``params.yaml`` checked against the evaluation metrics.

:func:`evaluate_gate` is a pure function of the metrics (the ``reports/metrics.json``
mapping: ``{"target": {...}, "oracle": {...}, "unlearned": {...}}``) and the
:class:`~components.config.GateConfig`. Each non-null threshold is one check:

======================================  ===================================================  ====
setting                                 value                                                op
======================================  ===================================================  ====
``gate.min_forget_quality``             unlearned forget_quality (needs an oracle)           >=
``gate.max_forget_prob_ratio``          unlearned forget_prob / target forget_prob           <=
``gate.min_utility_ratio``              unlearned model_utility / target's                   >=
``gate.max_abs_privleak``               abs(unlearned privleak) (needs an oracle)            <=
``gate.max_earlier_forget_prob_ratio``  worst earlier request: unlearned / target forget_prob <=
``gate.min_forget_holdout_ks_p``        unlearned forget_holdout_ks_p (no oracle needed)     >=
``gate.max_forget_holdout_auc_gap``     abs(unlearned forget_holdout_auc - 0.5)              <=
``gate.max_relearn_gap``                unlearned - oracle relearn_forget_prob               <=
======================================  ===================================================  ====

The earlier-request check re-reads ``metrics[model]["earlier"][request_id]["forget_prob"]``:
what was forgotten before must stay forgotten. With no earlier requests there is nothing
to re-check and it passes (said in its reason). The forget-vs-holdout AUC gap fails both
ways: near 1 the forget set is still familiar, near 0 it is over-forgotten and stands out.

Two verdicts. The checks marked *oracle* above (forget quality, privleak, the relearning gap)
compare with a model never trained on the forget set, which a platform team does not have
for its own model; the others need none. ``gate.decide: oracle_free`` (the default) promotes
on the oracle-free checks alone and reports the oracle's verdict beside it, where an oracle
exists, so a reviewer sees whether the two agree; ``gate.decide: all`` promotes only when every
check passes. An oracle check whose oracle is absent is then reported as unavailable, not failed.

The gate fails closed: a configured deciding check whose value cannot be computed (a null, NaN or
absent metric; a ratio over a zero target value) fails it, with the reason. To skip a
check, set its threshold to null; ``gate.fail_on_missing: false`` instead records such
checks as skipped (``passed=None``). The gate passes iff no deciding check failed. The
relearning gap has nothing to check on a forget set of one record (the attack needs one record
to train on and one to score): it passes, saying so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, NamedTuple

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
    reason: str | None = None  # why it failed or was skipped (or, if it passed, a note)
    basis: str = "oracle-free"  # "oracle": compares with the oracle model
    decides: bool = True        # False: reported beside the verdict, not part of it (gate.decide)

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "op": self.op,
            "threshold": _json_number(self.threshold),
            "value": _json_number(self.value),
            "passed": self.passed,
            "setting": self.setting,
            "reason": self.reason,
            "basis": self.basis,
            "decides": self.decides,
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
        """Why the gate failed, one line per failed deciding check (empty when it passed)."""
        return [check.reason for check in self.checks if check.decides and check.passed is False and check.reason]

    @property
    def skipped(self) -> list[GateCheck]:
        return [check for check in self.checks if check.passed is None]

    def verdict(self, basis: str) -> bool | None:
        """Whether every ``basis`` check ("oracle-free" or "oracle") passed; None when none could be
        computed (no oracle) or none is configured."""
        checks = [c for c in self.checks if c.basis == basis and c.passed is not None]
        return all(c.passed for c in checks) if checks else None

    @property
    def agreement(self) -> bool | None:
        """Whether the oracle-free and the oracle verdicts agree (None without an oracle verdict)."""
        oracle, free = self.verdict("oracle"), self.verdict("oracle-free")
        return None if oracle is None or free is None else oracle == free

    def completed(self, **changes: Any) -> "GateDecision":
        """A copy with registry fields filled in (``version``, ``alias``, ``run_id`` ...)."""
        return replace(self, **changes)

    def with_check(self, check: GateCheck) -> "GateDecision":
        """A copy with one more check (e.g. the registry's own), ``passed`` updated."""
        return replace(self, checks=self.checks + (check,), passed=self.passed and check.passed is not False)

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
            "oracle_free_passed": self.verdict("oracle-free"),
            "oracle_passed": self.verdict("oracle"),
            "verdicts_agree": self.agreement,
        }


class Measured(NamedTuple):
    """What one check measured: ``value``, or why it is missing; ``note`` says more (which
    request was worst); ``nothing_to_check`` marks a check with nothing to measure (passes)."""

    value: float | None
    missing: str | None = None
    note: str | None = None
    nothing_to_check: bool = False


def _as_number(value: Any, where: str) -> float | None:
    """``value`` as a float, None when null or NaN; a non-number is an input error."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where} must be a number or null, got {type(value).__name__}")
    value = float(value)
    return None if math.isnan(value) else value


def _section(metrics: Mapping[str, Any], model: str) -> Mapping[str, Any] | None:
    section = metrics.get(model)
    if section is not None and not isinstance(section, Mapping):
        raise ValueError(f"metrics['{model}'] must be a mapping of metric names to numbers")
    return section


def _number(metrics: Mapping[str, Any], model: str, key: str) -> float | None:
    """A metric as a float, None when null/NaN/absent."""
    section = _section(metrics, model)
    return None if section is None else _as_number(section.get(key), f"metrics['{model}']['{key}']")


def _divide(numerator: float | None, denominator: float | None, what: str) -> Measured:
    """numerator / denominator, or why it is undefined (``what`` names the two values)."""
    if numerator is None:
        return Measured(None, f"unlearned {what} is null or missing")
    if denominator is None:
        return Measured(None, f"target {what} is null or missing")
    if denominator == 0:
        if numerator == 0:
            return Measured(None, f"unlearned and target {what} are both 0 (ratio undefined)")
        return Measured(math.copysign(math.inf, numerator))
    return Measured(numerator / denominator)


def _ratio(key: str) -> Callable[[Mapping[str, Any]], Measured]:
    return lambda metrics: _divide(_number(metrics, "unlearned", key), _number(metrics, "target", key), key)


def _unlearned(key: str, why: str = "", transform: Callable[[float], float] = lambda v: v):
    def measure(metrics: Mapping[str, Any]) -> Measured:
        value = _number(metrics, "unlearned", key)
        return Measured(transform(value)) if value is not None else Measured(None, f"unlearned {key} is null{why}")
    return measure


def _earlier_forget_prob_ratio(metrics: Mapping[str, Any]) -> Measured:
    """The largest unlearned/target forget probability over the earlier requests."""
    sections = {model: (_section(metrics, model) or {}).get("earlier") for model in ("unlearned", "target")}
    if sections["unlearned"] is None:
        return Measured(None, "metrics['unlearned'] has no 'earlier' section (evaluate re-checks earlier requests)")
    if not sections["unlearned"]:
        return Measured(None, note="no earlier requests to re-check", nothing_to_check=True)
    worst: Measured | None = None
    for request_id, values in sorted(sections["unlearned"].items()):
        target = (sections["target"] or {}).get(request_id) or {}
        where = f"metrics['{{}}']['earlier']['{request_id}']['forget_prob']"
        measured = _divide(_as_number((values or {}).get("forget_prob"), where.format("unlearned")),
                           _as_number(target.get("forget_prob"), where.format("target")),
                           f"forget_prob of earlier request {request_id}")
        if measured.value is None:
            return measured
        if worst is None or measured.value > worst.value:
            worst = measured._replace(note=f"worst: earlier request {request_id}")
    return worst


def _auc_side(metrics: Mapping[str, Any]) -> str:
    auc = _number(metrics, "unlearned", "forget_holdout_auc")
    if auc is None or auc == 0.5:
        return ""
    return ("the forget set is still more familiar than the holdout: not forgotten" if auc > 0.5 else
            "the forget set is less familiar than the holdout: over-forgotten, it stands out")


def _auc_gap(metrics: Mapping[str, Any]) -> Measured:
    measured = _unlearned("forget_holdout_auc")(metrics)
    if measured.value is None:
        return measured
    return Measured(abs(measured.value - 0.5), note=f"AUC {measured.value:.4g}: {_auc_side(metrics)}")


def _relearn_gap(metrics: Mapping[str, Any]) -> Measured:
    """How much more of the held-out forget half the relearning attack brings back than the oracle learns."""
    ours, oracle = (_number(metrics, model, "relearn_forget_prob") for model in ("unlearned", "oracle"))
    n_forget = (_section(metrics, "unlearned") or {}).get("n_forget")
    if ours is None and isinstance(n_forget, int) and n_forget < 2:
        return Measured(None, note="a forget set of one record: the attack needs one to train on and one to score",
                        nothing_to_check=True)
    if ours is None:
        return Measured(None, "unlearned relearn_forget_prob is null (eval.relearn.enabled false?)")
    if oracle is None:
        return Measured(None, "oracle relearn_forget_prob is null (no oracle model?)")
    return Measured(ours - oracle, note=f"after the attack: unlearned {ours:.4g}, oracle {oracle:.4g}")


# The checks that compare with the oracle model (the rest need none).
ORACLE_CHECKS = frozenset({"min_forget_quality", "max_abs_privleak", "max_relearn_gap"})
# setting name in GateConfig -> (metric name in gate.json, operator, what it measures)
CHECKS: dict[str, tuple[str, str, Callable[[Mapping[str, Any]], Measured]]] = {
    "min_forget_quality": ("forget_quality", ">=", _unlearned("forget_quality", " (no oracle model?)")),
    "max_forget_prob_ratio": ("forget_prob_ratio", "<=", _ratio("forget_prob")),
    "min_utility_ratio": ("utility_ratio", ">=", _ratio("model_utility")),
    "max_abs_privleak": ("abs_privleak", "<=", _unlearned("privleak", " (no oracle model?)", abs)),
    "max_earlier_forget_prob_ratio": ("earlier_forget_prob_ratio", "<=", _earlier_forget_prob_ratio),
    "min_forget_holdout_ks_p": ("forget_holdout_ks_p", ">=", _unlearned("forget_holdout_ks_p")),
    "max_forget_holdout_auc_gap": ("forget_holdout_auc_gap", "<=", _auc_gap),
    "max_relearn_gap": ("relearn_gap", "<=", _relearn_gap),
}


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _check(setting: str, threshold: float, metrics: Mapping[str, Any], gate: GateConfig) -> GateCheck:
    """One configured threshold against the metrics."""
    metric, op, measure = CHECKS[setting]
    where = f"gate.{setting}"
    basis = "oracle" if setting in ORACLE_CHECKS else "oracle-free"
    decides = gate.decide == "all" or basis == "oracle-free"
    made = lambda value, passed, reason: GateCheck(metric, op, threshold, value, passed, where, reason,  # noqa: E731
                                                   basis, decides)
    measured = measure(metrics)
    if measured.nothing_to_check:
        return made(None, True, f"{metric}: {measured.note} ({where})")
    if measured.value is None:
        if not decides:
            return made(None, None, f"{metric} unavailable: {measured.missing} ({where}; reported, not deciding)")
        if not gate.fail_on_missing:
            return made(None, None, f"{metric} skipped: {measured.missing} ({where}; gate.fail_on_missing is false)")
        return made(None, False, f"{metric} cannot be computed: {measured.missing} ({where}). The gate fails "
                                 f"closed: set {where}: null to skip this check on purpose")
    passed = measured.value >= threshold if op == ">=" else measured.value <= threshold
    reason = measured.note
    if not passed:
        failed_op = "<" if op == ">=" else ">"
        reason = f"{metric} {_fmt(measured.value)} {failed_op} {_fmt(threshold)} ({where})"
        reason += f"; {measured.note}" if measured.note else ""
    return made(measured.value, passed, reason)


def evaluate_gate(metrics: Mapping[str, Any], gate: GateConfig) -> GateDecision:
    """Check every configured threshold; see the module docstring for the rules."""
    if not isinstance(metrics, Mapping):
        raise ValueError("metrics must be a mapping such as {'target': {...}, 'unlearned': {...}}")
    checks = [_check(setting, float(getattr(gate, setting)), metrics, gate)
              for setting in CHECKS if getattr(gate, setting) is not None]
    deciding = [check for check in checks if check.decides]
    notes = []
    if not checks:
        notes.append("no gate thresholds are configured (every gate.* is null): the candidate passes unchecked")
    elif not deciding:
        notes.append("only oracle checks are configured and gate.decide is oracle_free: the candidate passes "
                     "unchecked (the oracle's verdict is reported beside it)")
    elif all(check.passed is None for check in deciding):
        notes.append("every deciding check was skipped (its metric is null): nothing was actually checked")
    decision = GateDecision(passed=all(check.passed is not False for check in deciding), checks=tuple(checks))
    if decision.agreement is False:
        notes.append(f"the oracle-free verdict ({'pass' if decision.verdict('oracle-free') else 'fail'}) and the "
                     f"oracle's ({'pass' if decision.verdict('oracle') else 'fail'}) disagree")
    return replace(decision, notes=tuple(notes))
