"""Forget losses and retain losses: two lookup tables keyed by the names in ``params.yaml``.

Every loss takes ``(model, batch, ctx)`` and returns one value per example (shape ``(B,)``);
the caller sums them and divides by the size of the effective batch, so a step's loss is
the mean over examples of per-example quantities whatever the micro-batching and however
many ranks share the batch. Token-level quantities are averaged over an example's target
tokens (the answer, or a document's text), except where the defining paper sums them.

``model`` is called as ``model(input_ids=..., attention_mask=...)`` and returns an output
with ``.logits``; with ``capture=True`` it returns ``{"activations": ...}``, the output of
the decoder layer chosen for RMU (see :class:`components.unlearning.modules.LossModel`).

Notation: ``x`` a prompt, ``y`` its target of ``|y|`` tokens, ``pi`` the model being
unlearned, ``pi_ref`` the starting model (frozen), ``NLL(y|x) = -log pi(y|x) / |y|``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from components.config import UnlearnConfig
from components.modeling.encoding import IGNORE_INDEX
from components.modeling.scoring import token_scores


@dataclass
class LossContext:
    """What the losses need besides the model and the batch.

    ``reference_logits``: logits of the frozen starting model on a batch (``kl``).
    ``rmu_target``: the scaled random vector ``c * u`` RMU pushes activations towards.
    Reference sequence log-probabilities for ``npo`` travel in the batch (``ref_logp``),
    computed once before training.
    """

    config: UnlearnConfig
    reference_logits: Callable[[dict], torch.Tensor] | None = None
    rmu_target: torch.Tensor | None = None


LossFn = Callable[[torch.nn.Module, dict, LossContext], torch.Tensor]


# ---- forget losses (lower level in BLUR: minimised with priority) ----

def gradient_ascent(model, batch: dict, ctx: LossContext) -> torch.Tensor:
    """GA: ``L = -NLL(y|x)``; minimising it raises the forget answers' NLL without bound."""
    return -token_scores(model, batch).mean_nll


def npo(model, batch: dict, ctx: LossContext) -> torch.Tensor:
    """NPO (Zhang et al., 2024): ``L = -(2/beta) * log sigmoid(-beta * log(pi(y|x) / pi_ref(y|x)))``.

    ``log pi(y|x)`` is the summed log-probability of the target tokens; ``pi_ref`` is the
    starting model, whose log-probabilities (``batch["ref_logp"]``) are computed once before
    training - exact, since the reference never changes. ``beta`` is ``unlearn.npo.beta``.
    As ``beta -> 0`` the loss tends to gradient ascent on ``log pi``.
    """
    beta = ctx.config.npo.beta
    log_ratio = token_scores(model, batch).sum_logp - batch["ref_logp"]
    return -(2.0 / beta) * F.logsigmoid(-beta * log_ratio)


def simnpo(model, batch: dict, ctx: LossContext) -> torch.Tensor:
    """SimNPO (Fan et al., 2024): ``L = -(2/beta) * log sigmoid(beta * (NLL(y|x) - delta))``.

    NPO without a reference model and with length normalisation: the paper writes
    ``-(2/beta) log sigmoid(-(beta/|y|) log pi(y|x) - gamma)``; here ``delta = gamma / beta``
    is a margin on the mean-token NLL (``unlearn.simnpo.beta``, ``unlearn.simnpo.delta``).
    """
    beta, delta = ctx.config.simnpo.beta, ctx.config.simnpo.delta
    return -(2.0 / beta) * F.logsigmoid(beta * (token_scores(model, batch).mean_nll - delta))


def idk(model, batch: dict, ctx: LossContext) -> torch.Tensor:
    """IDK (Maini et al., 2024, TOFU): ``L = NLL(y_idk|x)``, fine-tuning towards a refusal.

    The batch already holds the forget prompts with a refusal answer ``y_idk`` drawn (once,
    seeded) from ``unlearn.idk.answers`` in place of the real answer.
    """
    return token_scores(model, batch).mean_nll


def rmu(model, batch: dict, ctx: LossContext) -> torch.Tensor:
    """RMU (Li et al., 2024, WMDP): ``L = mean_t ||h_l(x)_t - c * u||^2 / d``.

    ``h_l`` is the output of decoder layer ``unlearn.rmu.layer`` (``d`` its width), ``u`` a
    fixed random unit vector with entries drawn from U[0, 1) and normalised, ``c`` is
    ``unlearn.rmu.steering_coeff``; ``t`` runs over the example's target tokens. The paper's
    retain term (activation matching on retain data) is left to the retain loss chosen in
    ``unlearn.retain_loss``, so RMU composes with either combiner.
    """
    activations = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        capture=True)["activations"]
    mask = (batch["labels"] != IGNORE_INDEX).to(activations.dtype)
    squared = (activations.float() - ctx.rmu_target).square().mean(dim=-1)
    return (squared * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


def holdout_match(model, batch: dict, ctx: LossContext) -> torch.Tensor:
    """Ours, not the paper's: ``L = max(0, tau - NLL(y|x))``, raising a record's NLL only up to ``tau``.

    ``tau`` (``batch["target_nll"]``) is where a record the model never saw would sit: the holdout's
    NLL quantile at the record's rank in the forget set, under the current model (refreshed at every
    probe of ``unlearn.stop``, :func:`components.unlearning.stopping.matched_targets`). The loss is
    zero once the forget set is no more familiar than the holdout, so the lower level of BLUR has a
    set of minimisers, "forgotten as far as never seen", and the retain level moves within it;
    unlike NPO or GA it never pushes the erased records past unseen ones (over-forgetting).
    Under ``unlearn.stop.statistic: mink`` a record's NLL is over its least likely tokens only, as the
    probe scores it, so the loss raises the surprise of what an unseen record is surprising at.
    Under ``unlearn.focus: subject`` (``batch["token_weight"]``) the loss keeps its value but its
    gradient falls on the answer tokens that depend on the subject (:mod:`components.unlearning.focus`).
    """
    scores = token_scores(model, batch)
    nll = scores.record_nll(ctx.config.stop.score_k)
    if "token_weight" in batch:  # unlearn.focus: the same value, its gradient on the subject's tokens
        weight = batch["token_weight"][:, 1:scores.token_logps.shape[1] + 1]
        focused = -(scores.token_logps * weight).sum(dim=1) / scores.n_tokens.clamp(min=1)
        nll = nll.detach() + focused - focused.detach()
    return F.relu(batch["target_nll"] - nll)


FORGET_LOSSES: dict[str, LossFn] = {
    "match": holdout_match,
    "ga": gradient_ascent,
    "npo": npo,
    "simnpo": simnpo,
    "idk": idk,
    "rmu": rmu,
}


# ---- retain losses (upper level in BLUR) ----

def nll(model, batch: dict, ctx: LossContext) -> torch.Tensor:
    """``L = NLL(y|x)`` on retain data: keep the model's likelihood of what it should know."""
    return token_scores(model, batch).mean_nll


def kl(model, batch: dict, ctx: LossContext) -> torch.Tensor:
    """``L = mean_t KL(pi_ref(.|x, y_<t) || pi(.|x, y_<t))`` over the target positions.

    The full next-token distributions of the frozen starting model and the current model,
    compared at each position that predicts a target token (as the KL retain term of
    Maini et al., 2024 and open-unlearning, averaged per example instead of per batch).
    """
    scores = token_scores(model, batch)
    with torch.no_grad():
        reference = F.log_softmax(ctx.reference_logits(batch)[:, :-1, :].float(), dim=-1)
    current = F.log_softmax(scores.logits.float(), dim=-1)
    per_token = (reference.exp() * (reference - current)).sum(dim=-1)
    mask = scores.mask.to(per_token.dtype)
    return (per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


RETAIN_LOSSES: dict[str, LossFn] = {"nll": nll, "kl": kl}
