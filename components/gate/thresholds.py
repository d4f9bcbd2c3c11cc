"""The promotion gate: thresholds from ``params.yaml`` checked against the evaluation metrics.

:func:`evaluate_gate` is a pure function of the metrics (:class:`~components.artifacts.Metrics`,
``reports/metrics.json``) and the
:class:`~components.config.GateConfig`. Each non-null threshold is one check:

======================================  ===================================================  ====
setting                                 value                                                op
======================================  ===================================================  ====
``gate.min_forget_quality``             unlearned forget_quality (needs an oracle)           >=
``gate.max_forget_prob_ratio``          unlearned forget_prob / target forget_prob           <=
``gate.min_utility_ratio``              unlearned model_utility / target's                   >=
``gate.max_abs_privleak``               abs(unlearned privleak) (needs an oracle)            <=
``gate.max_earlier_forget_prob_ratio``  worst earlier request: unlearned / target forget_prob <=
``gate.max_earlier_regain_ratio``       worst earlier request: unlearned / erased forget_prob <=
``gate.min_forget_holdout_ks_p``        unlearned forget_holdout_ks_p (no oracle needed)     >=
``gate.max_forget_holdout_auc_gap``     abs(unlearned forget_holdout_auc - 0.5)              <=
``gate.max_relearn_gap``                unlearned - oracle relearn_forget_prob               <=
======================================  ===================================================  ====

The earlier-request check re-reads each earlier request's ``forget_prob`` of both models:
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
from typing import Any, Callable, Mapping, NamedTuple

from components.artifacts import GateCheck, GateDecision, Metrics
from components.config import GateConfig


class Measured(NamedTuple):
    """What one check measured: ``value``, or why it is missing; ``note`` says more (which
    request was worst); ``nothing_to_check`` marks a check with nothing to measure (passes)."""

    value: float | None
    missing: str | None = None
    note: str | None = None
    nothing_to_check: bool = False


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


def _ratio(key: str) -> Callable[[Metrics], Measured]:
    return lambda metrics: _divide(metrics.value("unlearned", key), metrics.value("target", key), key)


def _unlearned(key: str, why: str = "", transform: Callable[[float], float] = lambda v: v):
    def measure(metrics: Metrics) -> Measured:
        value = metrics.value("unlearned", key)
        return Measured(transform(value)) if value is not None else Measured(None, f"unlearned {key} is null{why}")
    return measure


def _nothing_earlier(earlier: Mapping | None) -> Measured | None:
    """Why there is no value over the earlier requests (no section: fails closed; none to re-check:
    nothing to check); None when there are some."""
    if earlier is None:
        return Measured(None, "metrics['unlearned'] has no 'earlier' section (evaluate re-checks earlier requests)")
    if not earlier:
        return Measured(None, note="no earlier requests to re-check", nothing_to_check=True)
    return None


def _earlier_forget_prob_ratio(metrics: Metrics) -> Measured:
    """The largest unlearned/target forget probability over the earlier requests."""
    unlearned, target = metrics.unlearned.earlier, metrics.target.earlier or {}
    if (nothing := _nothing_earlier(unlearned)) is not None:
        return nothing
    worst: Measured | None = None
    for request_id, values in sorted(unlearned.items()):
        measured = _divide(values.get("forget_prob"), (target.get(request_id) or {}).get("forget_prob"),
                           f"forget_prob of earlier request {request_id}")
        if measured.value is None:
            return measured
        if worst is None or measured.value > worst.value:
            worst = measured._replace(note=f"worst: earlier request {request_id}")
    return worst


def _earlier_regain_ratio(metrics: Metrics) -> Measured:
    """The largest unlearned forget probability of an earlier request over the one it was erased to
    (``erased_forget_prob``, from its certificate): a request forgotten to 0.05 that comes back to
    0.45 is 9x, even though 0.45 is half the target's 0.9. Fails closed on an unknown level."""
    earlier = metrics.unlearned.earlier
    if (nothing := _nothing_earlier(earlier)) is not None:
        return nothing
    worst: Measured | None = None
    for request_id, values in sorted(earlier.items()):
        now, level = values.get("forget_prob"), values.get("erased_forget_prob")
        if now is None:
            return Measured(None, f"unlearned forget_prob of earlier request {request_id} is null or missing")
        if level is None:
            return Measured(None, f"the forget_prob earlier request {request_id} was erased to is unknown "
                                  "(no certificate recorded it)")
        measured = _divide(now, level, f"forget_prob of earlier request {request_id} (now / when erased)")
        if measured.value is None:
            return measured
        if worst is None or measured.value > worst.value:
            worst = measured._replace(note=f"worst: earlier request {request_id}, {now:.4g} now, "
                                           f"{level:.4g} when erased")
    return worst


def _auc_side(metrics: Metrics) -> str:
    auc = metrics.value("unlearned", "forget_holdout_auc")
    if auc is None or auc == 0.5:
        return ""
    return ("the forget set is still more familiar than the holdout: not forgotten" if auc > 0.5 else
            "the forget set is less familiar than the holdout: over-forgotten, it stands out")


def _auc_gap(metrics: Metrics) -> Measured:
    measured = _unlearned("forget_holdout_auc")(metrics)
    if measured.value is None:
        return measured
    return Measured(abs(measured.value - 0.5), note=f"AUC {measured.value:.4g}: {_auc_side(metrics)}")


def _relearn_gap(metrics: Metrics) -> Measured:
    """How much more of the held-out forget half the relearning attack brings back than the oracle learns."""
    ours, oracle = (metrics.value(model, "relearn_forget_prob") for model in ("unlearned", "oracle"))
    n_forget = metrics.value("unlearned", "n_forget")
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
CHECKS: dict[str, tuple[str, str, Callable[[Metrics], Measured]]] = {
    "min_forget_quality": ("forget_quality", ">=", _unlearned("forget_quality", " (no oracle model?)")),
    "max_forget_prob_ratio": ("forget_prob_ratio", "<=", _ratio("forget_prob")),
    "min_utility_ratio": ("utility_ratio", ">=", _ratio("model_utility")),
    "max_abs_privleak": ("abs_privleak", "<=", _unlearned("privleak", " (no oracle model?)", abs)),
    "max_earlier_forget_prob_ratio": ("earlier_forget_prob_ratio", "<=", _earlier_forget_prob_ratio),
    "max_earlier_regain_ratio": ("earlier_regain_ratio", "<=", _earlier_regain_ratio),
    "min_forget_holdout_ks_p": ("forget_holdout_ks_p", ">=", _unlearned("forget_holdout_ks_p")),
    "max_forget_holdout_auc_gap": ("forget_holdout_auc_gap", "<=", _auc_gap),
    "max_relearn_gap": ("relearn_gap", "<=", _relearn_gap),
}


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _check(setting: str, threshold: float, metrics: Metrics, gate: GateConfig) -> GateCheck:
    """One configured threshold against the metrics."""
    metric, op, measure = CHECKS[setting]
    where = f"gate.{setting}"
    basis = "oracle" if setting in ORACLE_CHECKS else "oracle-free"
    decides = gate.decide == "all" or basis == "oracle-free"
    made = lambda value, passed, reason: GateCheck(  # noqa: E731
        metric=metric, op=op, threshold=threshold, value=value, passed=passed, setting=where, reason=reason,
        basis=basis, decides=decides)
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


def evaluate_gate(metrics: Metrics | Any, gate: GateConfig) -> GateDecision:
    """Check every configured threshold; see the module docstring for the rules. ``metrics`` is
    :class:`Metrics` (a mapping is validated into one: a value that is not a number is an error)."""
    metrics = Metrics.parse(metrics)
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
    return decision.completed(notes=tuple(notes))
