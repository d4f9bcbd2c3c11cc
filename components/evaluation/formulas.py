"""The arithmetic of every metric, on plain numbers: no model, no tokenizer, no I/O.

Definitions follow the benchmarks the field uses, so numbers can be compared with
published tables:

* TOFU (Maini et al., 2024): answer probability, ROUGE-L recall, truth ratio and its
  forget/retain scores, forget quality (KS test); model utility is their harmonic mean
  (``scipy.stats.hmean``, in :mod:`components.evaluation.metrics`). For its real-authors and
  world-facts sets: the probability of the answer among the options and 4-way accuracy.
* MUSE (Shi et al., 2024): verbatim and knowledge memorisation (ROUGE-L F1), min-k% prob
  membership inference and PrivLeak.
* Extraction strength (Carlini et al., 2021; as used by Wang et al., 2025).
* zlib membership score (Carlini et al., 2021).

Membership scores here are oriented "higher = more likely a member" (a training record),
so an AUC of 1.0 means the model separates the forget set perfectly from the holdout.
"""

from __future__ import annotations

import math
import zlib
from functools import lru_cache
from typing import Sequence

import numpy as np
from scipy.special import softmax

# rouge_score (which imports all of nltk), scipy.stats and sklearn.metrics load where they are first used:
# the unlearning loop's stop rule imports this module in every unlearning process and needs none of them
# before its first probe, and ROUGE is computed only by the evaluator.

# MUSE cuts a QA generation at these strings before scoring it.
QA_STOP_STRINGS = ("\n\n", "\nQuestion", "Question:")
MAX_LOG_RATIO = 700.0


def mean_nll(token_logps: np.ndarray) -> float:
    """Mean negative log-likelihood per target token."""
    if len(token_logps) == 0:
        raise ValueError("a target with no tokens has no probability")
    return float(-np.mean(token_logps))


def answer_probability(token_logps: np.ndarray) -> float:
    """exp(-mean token NLL): the geometric-mean probability of the target tokens."""
    return math.exp(-mean_nll(token_logps))


def log_truth_ratio(paraphrased_nll: float, perturbed_nlls: Sequence[float]) -> float:
    """log TR from mean-token NLLs: the paraphrase's NLL minus the mean of its perturbed answers' NLLs."""
    if not len(perturbed_nlls):
        raise ValueError("a truth ratio needs at least one perturbed answer")
    return paraphrased_nll - float(np.mean(perturbed_nlls))


def truth_ratio(paraphrased_logps: np.ndarray, perturbed_logps: Sequence[np.ndarray]) -> float:
    """Mean-token probability of the perturbed answers over that of the paraphrase.

    The perturbed answers are combined by a geometric mean of their mean-token
    probabilities, i.e. exp(-mean_j NLL_j). Below 1 the model prefers the true fact.
    """
    log_ratio = log_truth_ratio(mean_nll(paraphrased_logps), [mean_nll(lp) for lp in perturbed_logps])
    # A collapsed model (e.g. after runaway gradient ascent) can put the log-ratio past what
    # a float holds; clamp so the ratio stays finite (its scores are then 0 or 1 anyway).
    return math.exp(min(max(log_ratio, -MAX_LOG_RATIO), MAX_LOG_RATIO))


def option_probability(answer_logps: np.ndarray, wrong_logps: Sequence[np.ndarray]) -> float:
    """TOFU's probability on multiple-choice sets: the answer's mean-token probability over the sum
    of every option's (the answer's and the wrong ones'), computed in log space so none underflows."""
    return option_share(mean_nll(answer_logps), [mean_nll(lp) for lp in wrong_logps])


def option_share(answer_nll: float, wrong_nlls: Sequence[float]) -> float:
    """:func:`option_probability` from the options' mean token NLLs: softmax of their negatives, the answer's."""
    if not wrong_nlls:
        raise ValueError("an option probability needs at least one wrong option")
    return float(softmax(-np.array([answer_nll, *wrong_nlls]))[0])


def option_correct(answer_logps: np.ndarray, wrong_logps: Sequence[np.ndarray]) -> float:
    """1.0 when the answer's mean token log-probability is above every wrong option's, else 0.0
    (a tie counts as wrong): multiple-choice accuracy without generating."""
    if not wrong_logps:
        raise ValueError("a multiple-choice answer needs at least one wrong option")
    answer = mean_nll(answer_logps)
    return float(all(answer < mean_nll(lp) for lp in wrong_logps))


def forget_truth_ratio_score(ratio: float) -> float:
    """TOFU's forget-set score min(TR, 1/TR): 1 when true and false answers are equally likely."""
    return min(ratio, 1.0 / ratio) if ratio > 0 else 0.0


def utility_truth_ratio_score(ratio: float) -> float:
    """TOFU's retain-set score max(0, 1 - TR): high when the true answer is preferred."""
    return max(0.0, 1.0 - ratio)


def extraction_strength(hits: np.ndarray) -> float:
    """1 - k/|y| for the smallest k such that teacher-forced greedy predictions of y[k:] are right.

    ``hits[i]`` says whether the argmax prediction at target position i equals y[i].
    k is one past the last miss (0 when every token is predicted; |y| when the last one
    is missed, which gives 0).
    """
    n = len(hits)
    if n == 0:
        raise ValueError("a target with no tokens has no extraction strength")
    misses = np.flatnonzero(~np.asarray(hits, dtype=bool))
    k = int(misses[-1]) + 1 if len(misses) else 0
    return 1.0 - k / n


def min_k_score(token_logps: np.ndarray, k: float) -> float:
    """Min-k% prob: mean log-probability of the k fraction of least likely target tokens.

    At least one token is used. Higher means more likely a member.
    """
    if len(token_logps) == 0:
        raise ValueError("a target with no tokens has no min-k% score")
    count = max(1, int(len(token_logps) * k))
    return float(np.mean(np.sort(token_logps)[:count]))


def loss_score(token_logps: np.ndarray) -> float:
    """LOSS attack: minus the mean token NLL. Higher means more likely a member."""
    return -mean_nll(token_logps)


def zlib_score(token_logps: np.ndarray, text: str) -> float:
    """zlib attack: minus the mean token NLL over the zlib-compressed length of the text in bytes."""
    return -mean_nll(token_logps) / len(zlib.compress(text.encode("utf-8")))


@lru_cache(maxsize=4)
def _scorer(use_stemmer: bool):
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)


def rouge_l_recall(reference: str, generation: str) -> float:
    """TOFU's ROUGE score: ROUGE-L recall of the generation against the answer, with stemming."""
    return float(_scorer(True).score(reference, generation)["rougeL"].recall)


def rouge_l_f1(reference: str, generation: str) -> float:
    """MUSE's ROUGE score (VerbMem, KnowMem): ROUGE-L F1, no stemming."""
    return float(_scorer(False).score(reference, generation)["rougeL"].fmeasure)


def cut_at_stop_strings(text: str, stops: Sequence[str] = QA_STOP_STRINGS) -> str:
    """The text before the first stop string (MUSE's clean-up of QA generations)."""
    for stop in stops:
        text = text.split(stop)[0]
    return text


def ks_p_value(sample: Sequence[float], reference: Sequence[float]) -> float:
    """Two-sample Kolmogorov-Smirnov p-value (TOFU forget quality when fed truth ratios)."""
    from scipy.stats import ks_2samp

    return float(ks_2samp(np.asarray(sample, float), np.asarray(reference, float)).pvalue)


def membership_auc(member_scores: Sequence[float], nonmember_scores: Sequence[float]) -> float:
    """ROC AUC of telling members (label 1) from non-members by a higher-is-member score."""
    from sklearn.metrics import roc_auc_score

    labels = [1] * len(member_scores) + [0] * len(nonmember_scores)
    return float(roc_auc_score(labels, list(member_scores) + list(nonmember_scores)))


def privleak(auc_model: float, auc_oracle: float) -> float:
    """MUSE PrivLeak in percent: (AUC_model - AUC_oracle) / AUC_oracle * 100.

    Both AUCs are MUSE's, which treats the *holdout* as the positive class of the min-k%
    attack: ``1 - membership_auc``. So a model that still remembers the forget set (member
    AUC near 1) scores near -100, one that forgot as well as the oracle scores 0, and one
    that over-forgot (forget set now looks *less* familiar than unseen text) is positive.
    """
    muse_model, muse_oracle = 1.0 - auc_model, 1.0 - auc_oracle
    if muse_oracle == 0:
        return math.nan
    return (muse_model - muse_oracle) / muse_oracle * 100.0

