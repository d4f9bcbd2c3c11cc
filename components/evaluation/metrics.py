"""Metrics as small registered functions.

Every metric is a plain function ``fn(ctx, model, split) -> {"value": ..., "by_item": [...]}``
registered under a name. ``value`` is the aggregate (``None`` when it cannot be computed:
no such records, or a model it compares against is absent); ``by_item`` has one entry per
record of the split, in order (``None`` where the metric does not apply to that record),
or is empty for metrics of a whole model (forget quality, AUCs, privleak, utility).

A metric that needs another asks the context for it by name (``ctx.metric("truth_ratio",
...)``); the context computes each (metric, model, split) once. Model outputs come from
the context too (``ctx.targets``, ``ctx.alternatives``, ``ctx.generations``), computed
lazily, so a metric only costs the inference it needs. A per-item metric reads only its own
model's outputs; only whole-model metrics compare models (the evaluator runs one model at a
time and relies on this).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import numpy as np
from scipy.stats import hmean

from components.data.records import QARecord, Record, TextRecord
from components.evaluation import formulas
from components.evaluation.inference import TokenEvidence

MetricResult = dict[str, Any]
MetricFn = Callable[["MetricContext", str, str], MetricResult]

FORGET, RETAIN, HOLDOUT = "forget", "retain", "holdout"
ORACLE = "oracle"
TARGET = "target"


@dataclass(frozen=True)
class Alternatives:
    """Teacher-forced evidence on a QA record's paraphrased and perturbed answers."""

    paraphrased: TokenEvidence | None
    perturbed: tuple[TokenEvidence, ...]


@dataclass(frozen=True)
class Generation:
    """A greedy generation and the text it is scored against (never written to reports)."""

    text: str
    reference: str


class MetricContext(Protocol):
    """What a metric may ask for. The evaluator provides it."""

    config: Any  # components.config.EvalConfig

    def records(self, split: str) -> list[Record]: ...

    def has_model(self, model: str) -> bool: ...

    def utility_splits(self) -> list[str]: ...

    def knowledge_splits(self) -> list[str]: ...

    def metric(self, name: str, model: str, split: str) -> MetricResult: ...

    def targets(self, model: str, split: str) -> list[TokenEvidence]: ...

    def alternatives(self, model: str, split: str) -> list[Alternatives | None]: ...

    def generations(self, model: str, split: str) -> list[Generation | None]: ...

    def relearned(self, model: str, split: str) -> "list[TokenEvidence] | None": ...

    def relearn_held_out(self, split: str) -> tuple[int, ...]: ...


METRICS: dict[str, MetricFn] = {}
PER_ITEM: set[str] = set()


def register_metric(name: str, *, per_item: bool = True) -> Callable[[MetricFn], MetricFn]:
    """Register ``fn`` under ``name`` (names are unique).

    ``per_item=False`` marks a metric of a whole model, whose ``by_item`` is empty.
    """

    def decorate(fn: MetricFn) -> MetricFn:
        if name in METRICS:
            raise ValueError(f"a metric named '{name}' is already registered")
        METRICS[name] = fn
        if per_item:
            PER_ITEM.add(name)
        return fn

    return decorate


def get_metric(name: str) -> MetricFn:
    try:
        return METRICS[name]
    except KeyError:
        raise KeyError(f"unknown metric '{name}'; registered: {', '.join(sorted(METRICS))}") from None


def result(by_item: Sequence[float | None]) -> MetricResult:
    """Aggregate per-item values by their mean, skipping items the metric does not apply to."""
    values = [v for v in by_item if v is not None]
    return {"value": float(np.mean(values)) if values else None, "by_item": list(by_item)}


def scalar(value: float | None) -> MetricResult:
    """A whole-model metric (no per-item values); NaN becomes None."""
    if value is not None and math.isnan(value):
        value = None
    return {"value": value, "by_item": []}


def null_result(n_items: int = 0) -> MetricResult:
    return {"value": None, "by_item": [None] * n_items}


def _present(values: Sequence[float | None]) -> list[float]:
    return [v for v in values if v is not None]


# ---------------------------------------------------------------- per-item metrics


@register_metric("prob")
def prob(ctx: MetricContext, model: str, split: str) -> MetricResult:
    """Answer probability (QA: answer tokens; text: the text's tokens), exp(-mean NLL)."""
    return result([formulas.answer_probability(e.logps) for e in ctx.targets(model, split)])


@register_metric("extraction_strength")
def extraction_strength(ctx: MetricContext, model: str, split: str) -> MetricResult:
    return result([formulas.extraction_strength(e.hits) for e in ctx.targets(model, split)])


def _generation_scores(ctx: MetricContext, model: str, split: str, kind: type,
                       score: Callable[[str, str], float]) -> MetricResult:
    """``score(reference, generated)`` for each record of type ``kind`` (None for the others)."""
    return result([
        score(g.reference, g.text) if g is not None and isinstance(r, kind) else None
        for r, g in zip(ctx.records(split), ctx.generations(model, split))
    ])


@register_metric("rouge")
def rouge(ctx: MetricContext, model: str, split: str) -> MetricResult:
    """TOFU: ROUGE-L recall of the greedy answer to each question."""
    return _generation_scores(ctx, model, split, QARecord, formulas.rouge_l_recall)


@register_metric("knowmem")
def knowmem(ctx: MetricContext, model: str, split: str) -> MetricResult:
    """MUSE KnowMem: ROUGE-L F1 of the greedy answer to each question."""
    return _generation_scores(ctx, model, split, QARecord, formulas.rouge_l_f1)


@register_metric("verbmem")
def verbmem(ctx: MetricContext, model: str, split: str) -> MetricResult:
    """MUSE VerbMem: ROUGE-L F1 of the greedy continuation of each text's prefix."""
    return _generation_scores(ctx, model, split, TextRecord, formulas.rouge_l_f1)


@register_metric("truth_ratio")
def truth_ratio(ctx: MetricContext, model: str, split: str) -> MetricResult:
    """Raw truth ratio per QA record with a paraphrase and perturbed answers; value: their mean."""
    return result([
        formulas.truth_ratio(a.paraphrased.logps, [p.logps for p in a.perturbed])
        if a is not None and a.paraphrased is not None and a.perturbed else None
        for a in ctx.alternatives(model, split)
    ])


@register_metric("truth_ratio_forget")
def truth_ratio_forget(ctx: MetricContext, model: str, split: str) -> MetricResult:
    """TOFU forget score: mean of min(TR, 1/TR)."""
    ratios = ctx.metric("truth_ratio", model, split)["by_item"]
    return result([None if r is None else formulas.forget_truth_ratio_score(r) for r in ratios])


@register_metric("truth_ratio_utility")
def truth_ratio_utility(ctx: MetricContext, model: str, split: str) -> MetricResult:
    """TOFU retain score: mean of max(0, 1 - TR)."""
    ratios = ctx.metric("truth_ratio", model, split)["by_item"]
    return result([None if r is None else formulas.utility_truth_ratio_score(r) for r in ratios])


def _options(ctx: MetricContext, model: str, split: str,
             score: Callable[[np.ndarray, Sequence[np.ndarray]], float]) -> MetricResult:
    """``score(answer logps, wrong-option logps)`` per QA record with perturbed answers."""
    return result([
        score(t.logps, [p.logps for p in a.perturbed]) if a is not None and a.perturbed else None
        for t, a in zip(ctx.targets(model, split), ctx.alternatives(model, split))
    ])


@register_metric("option_prob")
def option_prob(ctx: MetricContext, model: str, split: str) -> MetricResult:
    """TOFU (real authors, world facts): the answer's probability among the options."""
    return _options(ctx, model, split, formulas.option_probability)


@register_metric("option_acc")
def option_acc(ctx: MetricContext, model: str, split: str) -> MetricResult:
    """Multiple-choice accuracy: 1 when the answer has the highest mean token log-probability."""
    return _options(ctx, model, split, formulas.option_correct)


def _target_text(record: Record) -> str:
    return record.text if isinstance(record, TextRecord) else record.answer


@register_metric("mia_loss")
def mia_loss(ctx: MetricContext, model: str, split: str) -> MetricResult:
    """Membership score of the LOSS attack (higher = more likely trained on)."""
    return result([formulas.loss_score(e.logps) for e in ctx.targets(model, split)])


@register_metric("mia_mink")
def mia_mink(ctx: MetricContext, model: str, split: str) -> MetricResult:
    """Membership score of the min-k% prob attack, k = eval.mink_k."""
    return result([formulas.min_k_score(e.logps, ctx.config.mink_k) for e in ctx.targets(model, split)])


@register_metric("mia_zlib")
def mia_zlib(ctx: MetricContext, model: str, split: str) -> MetricResult:
    """Membership score of the zlib attack."""
    return result([
        formulas.zlib_score(e.logps, _target_text(r)) for r, e in zip(ctx.records(split), ctx.targets(model, split))
    ])


# ---------------------------------------------------------------- whole-model metrics


@register_metric("forget_quality", per_item=False)
def forget_quality(ctx: MetricContext, model: str, split: str) -> MetricResult:
    """KS-test p-value between this model's and the oracle's truth ratios on a forget set."""
    if not ctx.has_model(ORACLE):
        return scalar(None)
    ours = _present(ctx.metric("truth_ratio", model, split)["by_item"])
    oracle = _present(ctx.metric("truth_ratio", ORACLE, split)["by_item"])
    if not ours or not oracle:
        return scalar(None)
    return scalar(formulas.ks_p_value(ours, oracle))


@register_metric("forget_holdout_ks_p", per_item=False)
def forget_holdout_ks_p(ctx: MetricContext, model: str, split: str) -> MetricResult:
    """Oracle-free forgetting check: KS p-value between a forget set and the holdout.

    Compares per-item truth ratios when both sides have some, else per-item losses (text
    records; ``mia_loss`` is minus the loss, which leaves the KS test unchanged). High means
    the erased records look like records the model never saw; low means they stand out,
    either still remembered or over-forgotten.
    """
    for name in ("truth_ratio", "mia_loss"):
        ours = _present(ctx.metric(name, model, split)["by_item"])
        holdout = _present(ctx.metric(name, model, HOLDOUT)["by_item"])
        if ours and holdout:
            return scalar(formulas.ks_p_value(ours, holdout))
    return scalar(None)


def _auc(ctx: MetricContext, model: str, split: str, score: str) -> MetricResult:
    members = _present(ctx.metric(score, model, split)["by_item"])
    nonmembers = _present(ctx.metric(score, model, HOLDOUT)["by_item"])
    if not members or not nonmembers:
        return scalar(None)
    return scalar(formulas.membership_auc(members, nonmembers))


@register_metric("mia_auc_loss", per_item=False)
def mia_auc_loss(ctx: MetricContext, model: str, split: str) -> MetricResult:
    """AUC of the LOSS attack, forget (members) vs holdout (non-members)."""
    return _auc(ctx, model, split, "mia_loss")


@register_metric("mia_auc_mink", per_item=False)
def mia_auc_mink(ctx: MetricContext, model: str, split: str) -> MetricResult:
    """AUC of the min-k% attack, forget (members) vs holdout (non-members)."""
    return _auc(ctx, model, split, "mia_mink")


@register_metric("mia_auc_zlib", per_item=False)
def mia_auc_zlib(ctx: MetricContext, model: str, split: str) -> MetricResult:
    """AUC of the zlib attack, forget (members) vs holdout (non-members)."""
    return _auc(ctx, model, split, "mia_zlib")


@register_metric("privleak", per_item=False)
def privleak(ctx: MetricContext, model: str, split: str) -> MetricResult:
    """MUSE PrivLeak from the min-k% AUCs of this model and the oracle (see formulas.privleak)."""
    if not ctx.has_model(ORACLE):
        return scalar(None)
    ours = ctx.metric("mia_auc_mink", model, split)["value"]
    oracle = ctx.metric("mia_auc_mink", ORACLE, split)["value"]
    if ours is None or oracle is None:
        return scalar(None)
    return scalar(formulas.privleak(ours, oracle))


@register_metric("relearn_forget_prob", per_item=False)
def relearn_forget_prob(ctx: MetricContext, model: str, split: str) -> MetricResult:
    """Mean answer probability on the held-out half of a forget set after the relearning attack
    (:mod:`components.evaluation.relearn`); None for a model that was not attacked."""
    evidence = ctx.relearned(model, split)
    if not evidence:
        return scalar(None)
    return scalar(float(np.mean([formulas.answer_probability(e.logps) for e in evidence])))


@register_metric("relearn_recovery", per_item=False)
def relearn_recovery(ctx: MetricContext, model: str, split: str) -> MetricResult:
    """Share of the gap to the target that the attack closes on the held-out half:
    (after - before) / (target - before); 0 nothing came back, 1 the target's level. None without
    a target, or when the model was already within 0.01 of the target there (nothing to recover)."""
    after = ctx.metric("relearn_forget_prob", model, split)["value"]
    if after is None or not ctx.has_model(TARGET):
        return scalar(None)
    held_out = ctx.relearn_held_out(split)
    before = _mean_at(ctx.metric("prob", model, split)["by_item"], held_out)
    target = _mean_at(ctx.metric("prob", TARGET, split)["by_item"], held_out)
    if before is None or target is None or target - before < 0.01:
        return scalar(None)
    return scalar((after - before) / (target - before))


def _mean_at(values: Sequence[float | None], indices: Sequence[int]) -> float | None:
    chosen = _present([values[i] for i in indices])
    return float(np.mean(chosen)) if chosen else None


UTILITY_COMPONENTS = ("prob", "rouge", "truth_ratio_utility")
# TOFU's real-authors and world-facts sets count the answer's probability among the options.
KNOWLEDGE_COMPONENTS = ("option_prob", "rouge", "truth_ratio_utility")


@register_metric("model_utility", per_item=False)
def model_utility(ctx: MetricContext, model: str, split: str) -> MetricResult:
    """TOFU model utility: harmonic mean of probability, ROUGE and truth-ratio score on ``split``,
    every utility set and every knowledge set.

    Components a set cannot give (no QA records, no perturbed answers) are left out; the rest
    are combined by :func:`utility_hmean`.
    """
    parts = [(name, UTILITY_COMPONENTS) for name in [split, *ctx.utility_splits()]]
    parts += [(name, KNOWLEDGE_COMPONENTS) for name in ctx.knowledge_splits()]
    values = [v for name, components in parts
              for v in _present([ctx.metric(c, model, name)["value"] for c in components])]
    return scalar(utility_hmean(values))


def utility_hmean(values: list[float]) -> float | None:
    """Model utility's combination of its parts: their harmonic mean, 0 if any part is 0, None if
    there are none or any is NaN (stated here rather than left to ``hmean``'s edge cases)."""
    if not values or any(math.isnan(v) for v in values):
        return None
    return 0.0 if min(values) == 0 else float(hmean(values))
