"""A NAIVE BLUR step, written for the step-cost benchmark only: the baseline, not the product.

It computes the same direction as :func:`components.unlearning.train_bilevel` with
``combiner="blur"``,

    d = g_r + (gamma - <g_r, g_f> / ||g_f||^2) * g_f,   clipped, then an optimizer step,

the way the paper's reference code goes about it (described in issue 3; no code copied):

- two full copies of the gradients: ``g_f`` cloned after the forget backward pass, ``g_r``
  cloned after the retain backward pass;
- the inner product and the squared norm accumulated one parameter tensor at a time, each
  partial result brought to the host with ``.item()`` (two host synchronisations per
  tensor; on a GPU each one stalls the device);
- the direction built as new tensors and assigned to ``.grad``.

The engine keeps one extra buffer, uses foreach kernels and synchronises once per step.
The benchmark checks the two give the same weights before timing them.
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
