"""A NAIVE BLUR step, written for the step-cost benchmark only: the baseline, not the product. The same direction
as the engine's, ``d = g_r + (gamma - <g_r, g_f> / ||g_f||^2) * g_f`` clipped, computed the way the paper's
reference code goes about it (two gradient copies, per-tensor ``.item()``).

How it works: ``benchmarks/README.md``, appendix, ``benchmarks.naive_blur``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

LossFn = Callable[[int, int], torch.Tensor]


def naive_blur_train(
    params: Sequence[torch.Tensor],
    forget_loss: LossFn,
    retain_loss: LossFn,
    optimizer: torch.optim.Optimizer,
    *,
    steps: int,
    start_step: int = 0,
    gamma: float = 1.0,
    max_grad_norm: float | None = None,
    log: Callable[[dict], None] | None = None,
) -> None:
    """Optimizer steps ``start_step + 1 .. steps`` of naive BLUR (one micro-batch per level)."""
    params = list(params)
    for step in range(start_step, steps):
        optimizer.zero_grad(set_to_none=True)
        forget_value = forget_loss(step, 0)
        forget_value.backward()
        g_f = [p.grad.detach().clone() for p in params]  # copy 1

        optimizer.zero_grad(set_to_none=True)
        retain_value = retain_loss(step, 0)
        retain_value.backward()
        g_r = [p.grad.detach().clone() for p in params]  # copy 2

        inner, forget_sq = 0.0, 0.0
        for a, b in zip(g_f, g_r):  # per tensor, each partial sum synchronised with the host
            inner += torch.sum(a * b).item()
            forget_sq += torch.sum(a * a).item()
        xi = gamma - inner / forget_sq if forget_sq > 0 else 0.0

        for p, a, b in zip(params, g_f, g_r):
            p.grad = b + xi * a
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        if log is not None:
            log({"step": step + 1, "forget_loss": forget_value.item(), "retain_loss": retain_value.item(), "xi": xi})
