"""BLUR-P (ours, not the paper's): BLUR's projection taken in the metric AdamW steps in.

BLUR promises ``<d, g_l> = gamma ||g_l||^2`` for the direction ``d`` it hands the optimizer,
but AdamW steps along about ``-lr * P d`` with ``P = diag(1 / (sqrt(v_hat) + eps))``, and
``<P d, g_l>`` keeps no such promise. BLUR-P takes inner products in ``P``'s metric:

    d = g_u + xi_P * g_l,   xi_P = gamma - <g_u, P g_l> / <g_l, P g_l>

so that ``<P d, g_l> = gamma <g_l, P g_l>``: along the step Adam takes (before momentum),
the lower-level loss falls at a rate set by ``gamma``. ``v_hat`` is the optimizer's
bias-corrected second moment from the steps so far (this step's gradient is not in it yet);
before the first step there is none, ``P`` is a multiple of the identity and BLUR-P is BLUR.

The two scalars are summed tensor by tensor, so BLUR-P needs no buffer of the parameters'
size beyond the loop's one gradient stash; under FSDP each rank sums over its shards of the
gradients and of the optimizer state, and the loop adds them up in its one all-reduce.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from components.unlearning.combine import accumulation_dtype

PRECONDITIONED = {"blur_p"}  # combiners that read their scalars in Adam's metric


@dataclass(frozen=True)
class SecondMoments:
    """Per tensor, the optimizer's ``exp_avg_sq`` (this rank's shard), and the scalars that turn it into ``P``."""

    exp_avg_sq: list[torch.Tensor]
    bias_correction: float  # 1 - beta2 ** steps taken
    eps: float


def second_moments(optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor], *,
                   sharded: bool = False) -> SecondMoments | None:
    """Adam's second moments of ``params`` (local shards when ``sharded``), or None before its first step."""
    group = optimizer.param_groups[0]
    if "betas" not in group:
        raise ValueError("the blur_p combiner projects in Adam's metric and needs an Adam-family optimizer "
                         "(unlearn.optimizer: adamw); with SGD use unlearn.combiner: blur")
    states = [optimizer.state.get(p, {}) for p in params]
    if not states or any("exp_avg_sq" not in state for state in states):
        return None
    steps = float(states[0]["step"])
    moments = [state["exp_avg_sq"] for state in states]
    if sharded:
        moments = [m.to_local() for m in moments]
    return SecondMoments(moments, 1.0 - group["betas"][1] ** steps, group["eps"])


def preconditioned_scalars(lower: Sequence[torch.Tensor], upper: Sequence[torch.Tensor],
                           moments: SecondMoments) -> torch.Tensor:
    """``[<g_u, P g_l>, <g_l, P g_l>]`` over all tensors together, in fp32 (fp64 for fp64 gradients)."""
    lower, upper = list(lower), list(upper)
    dtype = accumulation_dtype(lower + upper)
    terms = []
    for g_l, g_u, v in zip(lower, upper, moments.exp_avg_sq, strict=True):
        scaled = g_l.to(dtype) / ((v.to(dtype) / moments.bias_correction).sqrt() + moments.eps)
        terms.append(torch.stack([torch.dot(g_u.to(dtype).reshape(-1), scaled.reshape(-1)),
                                  torch.dot(g_l.to(dtype).reshape(-1), scaled.reshape(-1))]))
    return torch.stack(terms).sum(dim=0)
